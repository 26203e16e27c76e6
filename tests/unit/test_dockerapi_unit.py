"""The Docker Engine API face's pure parts: create bodies to ``build_config`` keywords
(mapped, accepted at zero, refused by name), filters, frames, error shapes, routes and
query parsing. The clients themselves: tests/integration/test_docker_api.py."""
from __future__ import annotations

import struct

import h11
import pytest

from sandboxd.dockerapi import error_status
from sandboxd.dockerapi.calls import frame
from sandboxd.dockerapi.containers import docker_filters
from sandboxd.dockerapi.http import HttpError, Request, route
from sandboxd.dockerapi.translate import create_options
from sandboxd.errors import CommandNotExecutable, CommandNotFound, Conflict, NotFound
from sandboxd.flags import build_config

# What ``docker run -it -m 64m --cpus 0.5 --pids-limit 64 --ulimit nofile=128:256 -p
# 8080:80 -v /srv:/data:ro -l a=b busybox sh`` sends (docker CLI 28), trimmed of nothing.
CLI_BODY = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": True,
    "AttachStdout": True, "AttachStderr": True, "ExposedPorts": {"80/tcp": {}},
    "Tty": True, "OpenStdin": True, "StdinOnce": True, "Env": [], "Cmd": ["sh"],
    "Image": "busybox", "Volumes": {}, "WorkingDir": "", "Entrypoint": None,
    "OnBuild": None, "Labels": {"a": "b"},
    "HostConfig": {
        "Binds": ["/srv:/data:ro"], "ContainerIDFile": "",
        "LogConfig": {"Type": "", "Config": {}}, "NetworkMode": "bridge",
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": False,
        "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [40, 120], "CapAdd": None,
        "CapDrop": None, "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [],
        "ExtraHosts": None, "GroupAdd": None, "IpcMode": "", "Cgroup": "", "Links": None,
        "OomScoreAdj": 0, "PidMode": "", "Privileged": False, "PublishAllPorts": False,
        "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
        "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 67108864,
        "NanoCpus": 500000000, "CgroupParent": "", "BlkioWeight": 0,
        "BlkioWeightDevice": [], "CpuPeriod": 0, "CpuQuota": 0, "CpusetCpus": "",
        "CpusetMems": "", "Devices": [], "DeviceCgroupRules": None, "DeviceRequests": None,
        "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": None,
        "OomKillDisable": False, "PidsLimit": 64,
        "Ulimits": [{"Name": "nofile", "Hard": 256, "Soft": 128}], "CpuCount": 0,
        "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": None,
        "ReadonlyPaths": None},
    "NetworkingConfig": {"EndpointsConfig": {}},
}


def test_the_clis_body_maps_onto_build_config() -> None:
    image, opts = create_options(CLI_BODY)
    assert image == "busybox"
    assert opts["memory"] == 64 << 20 and opts["cpus"] == 0.5 and opts["pids_limit"] == 64
    assert opts["ulimits"] == ["nofile=128:256"]
    assert opts["ports"] == ["8080:80/tcp"] and opts["volumes"] == ["/srv:/data:ro"]
    assert opts["tty"] and opts["open_stdin"] and opts["labels"] == {"a": "b"}
    config = build_config(image, **opts)
    assert config.tty and config.labels_dict() == {"a": "b"}


@pytest.mark.parametrize("body, words", [
    ({"Image": "busybox", "Bogus": 1}, "Config.Bogus: unknown field"),
    ({"Image": "busybox", "HostConfig": {"Nope": 0}}, "HostConfig.Nope: unknown field"),
    ({"Image": "busybox", "Healthcheck": {"Test": ["CMD", "true"]}}, "Config.Healthcheck"),
    ({"Image": "busybox", "HostConfig": {"Sysctls": {"a": "1"}}}, "namespaced sysctls"),
    ({"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "always"}}},
     "restart policies"),
    ({"Image": "busybox", "HostConfig": {"Memory": "64m"}}, "HostConfig.Memory: expected an "
                                                            "integer"),
    ({"Image": "busybox", "HostConfig": {"Memory": True}}, "HostConfig.Memory"),
    ({"Image": "busybox", "Env": "A=1"}, None),             # a string is one entry
    ({"Image": "busybox", "Env": [1]}, "Config.Env: expected a list of strings"),
    ({"Image": "busybox", "HostConfig": {"Ulimits": ["nofile"]}}, "HostConfig.Ulimits"),
    ({"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": ["x"]}}},
     "PortBindings[80/tcp]"),
    ({"Image": ""}, "Config.Image"),
    ({"Cmd": ["true"]}, "Config.Image"),
    ({"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"a": {}, "b": {}}}},
     "one network"),
])
def test_create_bodies_refused_by_name(body: dict, words: str | None) -> None:
    if words is None:
        assert create_options(body)[1]["env"] == ["A=1"]
        return
    with pytest.raises(HttpError) as e:
        create_options(body)
    assert e.value.status == 400 and words in e.value.message


def test_defaults_the_clients_send_are_accepted() -> None:
    host = {"ShmSize": 67108864, "MemorySwappiness": -1, "CgroupnsMode": "private",
            "Runtime": "runc", "LogConfig": {"Type": "json-file", "Config": {}},
            "ConsoleSize": [0, 0]}
    assert create_options({"Image": "busybox", "HostConfig": host})[0] == "busybox"


def test_filters_both_shapes() -> None:
    assert docker_filters({"label": {"a=b": True, "c": False}, "status": ["running"]}) == \
        {"label": ["a=b"], "status": ["running"]}
    assert docker_filters(None) == {}
    for bad in ([1], {"label": "a=b"}):
        with pytest.raises(HttpError):
            docker_filters(bad)


def test_frame() -> None:
    data = frame(2, b"oops\n")
    assert data[:8] == struct.pack(">BxxxL", 2, 5) and data[8:] == b"oops\n"


def test_error_status_words_the_cli_reads() -> None:
    """The CLI picks its exit code from the start error's words: 127 for "executable
    file not found", 126 for "permission denied"."""
    status, message = error_status(CommandNotFound("executable file not found in $PATH: x"))
    assert status == 400 and "executable file not found" in message
    status, message = error_status(CommandNotExecutable("exec /etc: Permission denied"))
    assert status == 400 and "permission denied" in message
    assert error_status(NotFound("No such container: x"))[0] == 404
    assert error_status(Conflict("in use"))[0] == 409
    assert error_status(ValueError("x")) is None


def _request(target: str) -> Request:
    return Request(None, h11.Request(method="GET", target=target,     # type: ignore[arg-type]
                                     headers=[("Host", "d")]))


def test_request_parsing() -> None:
    r = _request("/v1.43/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%22%5D%7D"
                 "&limit=x&flag=maybe")
    assert r.api_version == (1, 43) and r.path == "/containers/json"
    assert r.flag("all") and r.json_arg("filters") == {"label": ["a"]}
    with pytest.raises(HttpError, match="limit"):
        r.integer("limit", -1)
    with pytest.raises(HttpError, match="flag"):
        r.flag("flag")
    assert _request("/_ping").api_version is None


def test_route_patterns() -> None:
    r = route("GET", "/images/{name:path}/json", lambda _r: None)      # type: ignore
    assert r.pattern.match("/images/127.0.0.1:5000/a/b:v1/json")["name"] == \
        "127.0.0.1:5000/a/b:v1"
    c = route("GET", "/containers/{id}/json", lambda _r: None)         # type: ignore
    assert c.pattern.match("/containers/a/b/json") is None
