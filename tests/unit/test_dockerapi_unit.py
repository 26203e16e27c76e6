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
    assert opts["console_size"] == [40, 120]          # the pty's size from the start
    config = build_config(image, **opts)
    assert config.tty and config.labels_dict() == {"a": "b"}
    assert config.host.console_size == (40, 120)


@pytest.mark.parametrize("body, words", [
    ({"Image": "busybox", "Bogus": 1}, "Config.Bogus: unknown field"),
    ({"Image": "busybox", "HostConfig": {"Nope": 0}}, "HostConfig.Nope: unknown field"),
    ({"Image": "busybox", "Healthcheck": {"Test": ["CMD"]}}, "Config.Healthcheck.Test"),
    ({"Image": "busybox", "Healthcheck": {"Test": ["SHELL", "x"]}},
     "Config.Healthcheck.Test"),
    ({"Image": "busybox", "Healthcheck": {"Interval": -1}}, "Config.Healthcheck.Interval"),
    ({"Image": "busybox", "Healthcheck": {"Interval": "1s"}}, "Config.Healthcheck.Interval"),
    ({"Image": "busybox", "Healthcheck": {"Bogus": 1}}, "Config.Healthcheck.Bogus"),
    ({"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "always",
                                                           "MaximumRetryCount": 2}}},
     "HostConfig.RestartPolicy.MaximumRetryCount"),
    ({"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": 1}}},
     "HostConfig.RestartPolicy.Name"),
    ({"Image": "busybox", "HostConfig": {"Mounts": [{"Type": "volume", "Target": "/d",
                                                     "Bogus": 1}]}},
     "HostConfig.Mounts[0].Bogus"),
    ({"Image": "busybox", "HostConfig": {"Mounts": [{"Type": "tmpfs", "Target": "/t",
                                                     "TmpfsOptions": {"Options": [["x"]]}}]}},
     "HostConfig.Mounts[0].TmpfsOptions.Options"),
    ({"Image": "busybox", "HostConfig": {"Mounts": {"Target": "/d"}}}, "HostConfig.Mounts"),
    ({"Image": "busybox", "HostConfig": {"CpusetCpus": 0}}, "HostConfig.CpusetCpus"),
    ({"Image": "busybox", "HostConfig": {"ShmSize": "8m"}}, "HostConfig.ShmSize"),
    ({"Image": "busybox", "HostConfig": {"GroupAdd": [10]}}, "HostConfig.GroupAdd"),
    ({"Image": "busybox", "HostConfig": {"Devices": [{"PathOnHost": "/dev/sda"}]}},
     "HostConfig.Devices"),
    ({"Image": "busybox", "HostConfig": {"Memory": "64m"}}, "HostConfig.Memory: expected an "
                                                            "integer"),
    ({"Image": "busybox", "HostConfig": {"Memory": True}}, "HostConfig.Memory"),
    ({"Image": "busybox", "HostConfig": {"ConsoleSize": 5}}, "HostConfig.ConsoleSize"),
    ({"Image": "busybox", "HostConfig": {"ConsoleSize": [1, "x"]}},
     "HostConfig.ConsoleSize"),
    ({"Image": "busybox", "Env": "A=1"}, None),             # a string is one entry
    ({"Image": "busybox", "Env": [1]}, "Config.Env: expected a list of strings"),
    ({"Image": "busybox", "HostConfig": {"Ulimits": ["nofile"]}}, "HostConfig.Ulimits"),
    ({"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": ["x"]}}},
     "PortBindings[80/tcp]"),
    ({"Image": ""}, "Config.Image"),
    ({"Cmd": ["true"]}, "Config.Image"),
    # Go's typed decode refuses these; they were an internal error or an unnamed one
    ({"Image": "busybox", "WorkingDir": 5}, "Config.WorkingDir: expected a string, got 5"),
    ({"Image": "busybox", "User": 0}, "Config.User: expected a string"),
    ({"Image": "busybox", "Hostname": 5}, "Config.Hostname: expected a string"),
    ({"Image": "busybox", "StopSignal": 9}, "Config.StopSignal: expected a string"),
    ({"Image": "busybox", "Tty": "yes"}, "Config.Tty: expected true or false"),
    ({"Image": "busybox", "Labels": {"a": 1}}, "Config.Labels.a: expected a string"),
    ({"Image": "busybox", "HostConfig": {"NetworkMode": 5}}, "HostConfig.NetworkMode"),
    ({"Image": "busybox", "HostConfig": {"Tmpfs": {"/t": 5}}}, "HostConfig.Tmpfs./t"),
    ({"Image": "busybox", "HostConfig": {"AutoRemove": "1"}}, "HostConfig.AutoRemove"),
    ({"Image": "busybox", "HostConfig": {"Sysctls": {"net.x": 1}}},
     "HostConfig.Sysctls.net.x: expected a string"),
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
    image, opts = create_options({"Image": "busybox", "HostConfig": host})
    assert image == "busybox" and opts["console_size"] == []     # no terminal: none


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


def test_restart_health_and_limits_map_onto_build_config() -> None:
    body = {"Image": "busybox",
            "Healthcheck": {"Test": ["CMD", "wget", "-q", "localhost"], "Interval": 10**9,
                            "Timeout": 2 * 10**9, "StartPeriod": 0, "Retries": 4},
            "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
                           "Sysctls": {"net.ipv4.ip_forward": "1"}, "CpusetCpus": "0",
                           "MemoryReservation": 32 << 20, "OomKillDisable": True,
                           "GroupAdd": ["10"], "ShmSize": 8 << 20,
                           "VolumesFrom": ["other:ro"]}}
    image, opts = create_options(body)
    assert opts["restart"] == "on-failure:2" and opts["health_cmd"] == ["wget", "-q",
                                                                          "localhost"]
    assert opts["health_interval"] == 1.0 and opts["health_retries"] == 4
    config = build_config(image, **opts)
    h = config.host
    assert (h.restart_policy, h.restart_retries) == ("on-failure", 2)
    assert config.healthcheck.test == ("CMD", "wget", "-q", "localhost")
    assert config.healthcheck.timeout == 2.0 and config.healthcheck.start_period == 0.0
    assert h.sysctls == ("net.ipv4.ip_forward=1",) and h.cpuset_cpus == "0"
    assert h.memory_reservation == 32 << 20 and h.oom_kill_disable
    assert h.group_add == ("10",) and h.shm_size == 8 << 20
    assert h.volumes_from == ("other:ro",)


@pytest.mark.parametrize("test, expected", [
    (["CMD-SHELL", "true"], ("CMD-SHELL", "true")),
    (["NONE"], ("NONE",)),
    ([], ()),
    (None, ()),
])
def test_healthcheck_test_forms(test: list | None, expected: tuple) -> None:
    image, opts = create_options({"Image": "busybox", "Healthcheck": {"Test": test}})
    assert build_config(image, **opts).healthcheck.test == expected


def test_mounts_map_onto_mount_flags() -> None:
    mounts = [
        {"Type": "volume", "Source": "v1", "Target": "/d", "ReadOnly": True,
         "VolumeOptions": {"NoCopy": True, "Labels": {"k": "v"},
                           "DriverConfig": {"Name": "local", "Options": {}}}},
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1 << 20,
                                                           "Mode": 0o1777}},
        {"Type": "bind", "Source": "/srv/a,b", "Target": "/b",
         "BindOptions": {"Propagation": "rprivate"}},
    ]
    image, opts = create_options({"Image": "busybox", "HostConfig": {"Mounts": mounts}})
    assert opts["mounts"][1] == "type=tmpfs,target=/t,tmpfs-size=1048576,tmpfs-mode=1777"
    got = {m.destination: m for m in build_config(image, **opts).host.mounts}
    assert (got["/d"].type, got["/d"].source, got["/d"].readonly) == ("volume", "v1", True)
    assert "nocopy" in got["/d"].options and "label=k=v" in got["/d"].options
    assert got["/t"].options == ("size=1048576", "mode=1777")
    assert got["/b"].source == "/srv/a,b"          # CSV-quoted through the flag's parser


def test_mount_values_checked_by_the_flags_parser() -> None:
    from sandboxd.errors import InvalidArgument
    image, opts = create_options({"Image": "busybox", "HostConfig": {"Mounts": [
        {"Type": "bind", "Source": "/srv", "Target": "/b",
         "BindOptions": {"Propagation": "rshared"}}]}})
    with pytest.raises(InvalidArgument, match="bind-propagation"):
        build_config(image, **opts)


def test_endpoint_aliases_become_network_aliases() -> None:
    image, opts = create_options({"Image": "busybox", "HostConfig": {"NetworkMode": "net1"},
                                  "NetworkingConfig": {"EndpointsConfig": {
                                      "net1": {"Aliases": ["db", "cache"]}}}})
    assert build_config(image, **opts).host.network_aliases == ("db", "cache")


def test_a_version_prefix_below_1_24_is_refused_as_dockerd_does():
    import asyncio

    from sandboxd.dockerapi.http import HttpServer
    request = Request.__new__(Request)
    request.api_version, request.method, request.path = (1, 10), "GET", "/_ping"
    server = HttpServer([], lambda e: None)
    with pytest.raises(HttpError) as caught:
        asyncio.run(server.dispatch(request))
    assert caught.value.status == 400
    assert "client version 1.10 is too old. Minimum supported API version is 1.24" \
        in caught.value.message
