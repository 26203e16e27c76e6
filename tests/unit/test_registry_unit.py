"""Registry client pieces that need no server: references split like Docker's,
credentials file, auth challenges, platform choice, manifest checks."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.images import oci
from sandboxd.reference import Reference, normalize_ref, parse
from sandboxd.images.registry import (Credentials, RegistryClient, _parse_challenge,
                                      _registry_errors, is_loopback)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref, expected", [
    ("busybox", Reference("docker.io", "library/busybox", "latest", None)),
    ("team/app:v2", Reference("docker.io", "team/app", "v2", None)),
    ("docker.io/library/busybox:1", Reference("docker.io", "library/busybox", "1", None)),
    ("index.docker.io/team/app", Reference("docker.io", "team/app", "latest", None)),
    ("busybox@" + DIGEST, Reference("docker.io", "library/busybox", None, DIGEST)),
    ("localhost/app", Reference("localhost", "app", "latest", None)),
    ("localhost:5000/repo/name:tag@" + DIGEST,
     Reference("localhost:5000", "repo/name", "tag", DIGEST)),
    ("127.0.0.1:5000/x@" + DIGEST, Reference("127.0.0.1:5000", "x", None, DIGEST)),
    ("registry.example.com/a/b/c:1.0", Reference("registry.example.com", "a/b/c", "1.0", None)),
])
def test_parse_splits_like_docker(ref, expected):
    r = parse(ref)
    assert r == expected
    assert parse(str(r)) == r


def test_parse_reference_and_name():
    r = parse("localhost:5000/repo/name:tag@" + DIGEST)
    assert r.name == "localhost:5000/repo/name" and r.reference == DIGEST
    assert parse("localhost:5000/repo").reference == "latest"
    assert parse("Host/app").domain == "Host"               # uppercase: a host, as Docker
    for bad in ("", "team/UPPER", "a:b:c", "x@sha256:12", "localhost:5000/"):
        with pytest.raises(InvalidArgument):
            parse(bad)


def test_names_are_kept_in_dockers_short_form():
    assert normalize_ref("docker.io/library/busybox:1") == "busybox:1"
    assert normalize_ref("index.docker.io/library/busybox") == "busybox:latest"
    assert normalize_ref("docker.io/team/app") == "team/app:latest"
    assert normalize_ref("docker.io/library/a/b") == "library/a/b:latest"
    assert normalize_ref("localhost:5000/x") == "localhost:5000/x:latest"
    assert normalize_ref("busybox@" + DIGEST) == "busybox@" + DIGEST
    assert parse("busybox").familiar == "busybox"
    assert parse("docker.io/team/app").familiar == "team/app"


def test_credentials_file_is_private_and_docker_shaped(tmp_path):
    creds = Credentials(tmp_path / "auth.json")
    assert creds.get("localhost:5000") is None
    creds.set("localhost:5000", "me", "pa:ss")
    mode = stat.S_IMODE(os.stat(tmp_path / "auth.json").st_mode)
    assert mode == 0o600
    doc = json.loads((tmp_path / "auth.json").read_text())
    assert base64.b64decode(doc["auths"]["localhost:5000"]["auth"]) == b"me:pa:ss"
    assert creds.get("localhost:5000") == ("me", "pa:ss")
    assert creds.erase("localhost:5000") and not creds.erase("localhost:5000")
    assert creds.get("localhost:5000") is None
    (tmp_path / "auth.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="unreadable credentials file"):
        creds.get("x")
    assert list(tmp_path.iterdir()) == [tmp_path / "auth.json"]     # no temp files left


def test_challenges_and_error_bodies():
    assert _parse_challenge('Bearer realm="https://auth.example/token",'
                            'service="registry.example",scope="repository:a/b:pull"') == \
        ("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                    "scope": "repository:a/b:pull"})
    assert _parse_challenge('Basic realm="sbx"') == ("basic", {"realm": "sbx"})
    assert _registry_errors(b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest '
                            b'unknown"}]}') == ("MANIFEST_UNKNOWN", "manifest unknown")
    assert _registry_errors(b"<html>gateway</html>") == ("", "<html>gateway</html>")


def test_plain_http_only_on_loopback():
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.2:80")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")
    assert RegistryClient("localhost:5000").scheme == "http"
    assert RegistryClient("registry.example.com").scheme == "https"
    assert RegistryClient("registry.example.com", plain_http=True).scheme == "http"


def test_pick_platform_prefers_this_machine_without_variant():
    index = {"manifests": [
        {"digest": "arm", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "v3", "platform": {"os": "linux", "architecture": "amd64",
                                      "variant": "v3"}},
        {"digest": "plain", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "win", "platform": {"os": "windows", "architecture": "amd64"}},
        {"digest": "att", "mediaType": "application/vnd.in-toto+json",
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert oci.pick_platform(index, "amd64")["digest"] == "plain"
    assert oci.pick_platform(index, "arm64")["digest"] == "arm"
    assert oci.pick_platform(index, "s390x") is None


def test_check_manifest_and_times():
    good = {"config": {"digest": DIGEST, "size": 2},
            "layers": [{"digest": DIGEST, "size": 3, "mediaType": oci.DOCKER_LAYER_GZIP}]}
    assert oci.check_manifest(good, "x") is good
    with pytest.raises(InvalidArgument, match="x: manifest layer 0 is not a descriptor"):
        oci.check_manifest({**good, "layers": [{"digest": "md5:1", "size": 1}]}, "x")
    with pytest.raises(InvalidArgument, match="not a filesystem layer"):
        oci.check_manifest({**good, "layers": [{"digest": DIGEST, "size": 1,
                                                "mediaType": "application/x-helm"}]}, "x")
    assert oci.parse_time("1970-01-01T00:00:01.999999999Z") == pytest.approx(1.999999)
    assert oci.parse_time("1970-01-01T01:00:00+01:00") == 0
    assert oci.parse_time("") is None


def test_daemon_config_registry_settings(tmp_path):
    from sandboxd.daemonconfig import load_config
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"registry-mirrors": ["http://127.0.0.1:5000/"],
                                "insecure-registries": ["10.0.0.0/8", "reg.lan:5000"]}))
    config = load_config(str(path))
    assert config.registry_mirrors == ("http://127.0.0.1:5000",)
    assert config.insecure_registries == ("10.0.0.0/8", "reg.lan:5000")
    assert config.hub_endpoint == "https://registry-1.docker.io"
    flags = load_config(str(path), registry_mirrors=("https://m.example",),
                        hub_endpoint="http://127.0.0.1:9")
    assert flags.registry_mirrors == ("https://m.example",)       # flags win
    assert flags.hub_endpoint == "http://127.0.0.1:9"
    path.write_text(json.dumps({"registry-mirrors": ["m.example"],
                                "insecure-registries": ["https://x/y"]}))
    with pytest.raises(InvalidArgument) as e:
        load_config(str(path))
    problems = e.value.details["problems"]
    assert any("'m.example' is not a mirror URL" in p for p in problems)
    assert any("'https://x/y' is neither host[:port] nor a CIDR" in p for p in problems)


@pytest.mark.parametrize("text, expected", [
    ("linux/arm64", ("linux", "arm64", "")), ("arm64", ("linux", "arm64", "")),
    ("linux/arm/v7", ("linux", "arm", "v7")), ("linux/x86_64", ("linux", "amd64", "")),
    ("linux", ("linux", oci.architecture(), "")), ("LINUX/AMD64", ("linux", "amd64", "")),
])
def test_platforms_parse_like_dockers(text, expected):
    assert oci.parse_platform(text) == expected


def test_bad_platforms_are_refused():
    for bad, why in (("windows/amd64", "only linux images run here"),
                     ("linux/amd64/v3/x", "expected os"), ("", "expected os"),
                     ("linux//", "expected os")):
        with pytest.raises(InvalidArgument, match=why):
            oci.parse_platform(bad)
    index = {"manifests": [{"platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                           {"platform": {"os": "unknown", "architecture": "unknown"}},
                           {"platform": {"os": "linux", "architecture": "amd64"}}]}
    assert oci.index_platforms(index) == ["linux/arm/v7", "linux/amd64"]


def test_an_image_configs_runtime_fields_are_type_checked() -> None:
    runtime_problems = oci.runtime_problems
    assert runtime_problems(None) == [] and runtime_problems({}) == []
    good = {"Env": ["PATH=/bin"], "Cmd": None, "Entrypoint": ["sh"], "WorkingDir": "/w",
            "User": "1000", "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/v": {}}, "StopSignal": "SIGINT", "ArgsEscaped": True,
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 10**9, "Retries": 3}}
    assert runtime_problems(good) == []
    assert runtime_problems([]) == ["config: expected an object, got list"]
    assert runtime_problems({"Cmd": [1], "User": 0, "Labels": {"a": 1},
                             "Healthcheck": {"Retries": True}}) == [
        "config.User: expected a string, got 0",
        "config.Cmd: expected a list of strings, got [1]",
        "config.Labels: expected an object of strings, got {\"a\": 1}",
        "config.Healthcheck: expected {Test: [strings], Interval, Timeout, StartPeriod, "
        "StartInterval (ns), Retries: integers}, got {\"Retries\": true}"]
