"""CHECKS.md item 12: no archive or image a user feeds sandboxd writes outside its target.

Every surface that unpacks a tar someone else made gets the same hostile entries
(:data:`KINDS`): ``../`` names, absolute names, a symlink then a file through it, hard
links to a host file (absolute and ``../``), device nodes, a fifo, whiteouts of ``..``,
opaque markers in odd places, a setuid file, a name too long for the filesystem. Each
hostile entry aims at a *canary*: a file in a directory beside the target on the host.
After each attempt the canary directory, and a few host files, must hash the same, and
the daemon must still answer (no ``internal`` error).

Surfaces: the unpacker itself (``apply_layer``), ``sbx import``, ``sbx load`` (docker
save and OCI layout, with hostile manifest.json/index.json too), ``sbx cp`` both ways,
``sbx build`` (a hostile context tar, context symlinks, ``COPY ../x``, ``ADD`` of a
hostile tarball) and a layer pulled from a local registry.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import uuid
from pathlib import Path
from typing import Callable

import pytest

from harness import busybox_with_config
from registries import NO_REGISTRY, REGISTRY_BIN, serve_registry
from sandboxd.client import connect
from sandboxd.errors import SandboxError
from sandboxd.images.unpack import apply_layer

HOST_FILES = ("/etc/passwd", "/etc/shadow", "/etc/hostname")
VICTIM = "victim"
Entries = list[tuple[tarfile.TarInfo, bytes | None]]


# ---------------------------------------------------------------- hostile tars

def _info(name: str, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _file(name: str, data: bytes = b"pwned\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, size=len(data), mode=mode), data


def _kinds(canary: Path) -> dict[str, Entries]:
    """Each hostile kind as tar entries aimed at ``canary`` (a host directory holding
    :data:`VICTIM`)."""
    victim = str(canary / VICTIM)
    up = "../" * 40
    return {
        "dotdot": [_file(up + victim.lstrip("/")), _file("a/../../" + VICTIM)],
        "absolute": [_file(victim), _file("/" + str(canary / "new"))],
        "symlink_then_file": [(_info("esc", type=tarfile.SYMTYPE, linkname=str(canary)), None),
                              _file("esc/" + VICTIM), _file("esc/new")],
        "relative_symlink_then_file": [
            (_info("d/esc", type=tarfile.SYMTYPE, linkname=up + str(canary).lstrip("/")), None),
            _file("d/esc/" + VICTIM)],
        "symlink_to_victim_then_file": [
            (_info("v", type=tarfile.SYMTYPE, linkname=victim), None), _file("v")],
        "hardlink_absolute": [(_info("h", type=tarfile.LNKTYPE, linkname=victim), None),
                              _file("h")],
        "hardlink_dotdot": [(_info("h", type=tarfile.LNKTYPE,
                                   linkname=up + victim.lstrip("/")), None), _file("h")],
        "hardlink_host_file": [(_info("pw", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
                                None), _file("pw")],
        "chardev": [(_info("dev/mem2", type=tarfile.CHRTYPE, devmajor=1, devminor=1), None)],
        "blockdev": [(_info("sda2", type=tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
        "fifo": [(_info("fifo", type=tarfile.FIFOTYPE), None)],
        "whiteout_dotdot": [_file(".wh..."), _file("sub/.wh..."), _file(".wh.."),
                            _file(".wh." + up + str(canary).lstrip("/"))],
        "opaque_odd_places": [_file(".wh..wh..opq"), _file("../.wh..wh..opq"),
                              _file("x/y/.wh..wh..opq"), _file(".wh..wh..wh..opq")],
        "setuid": [_file("bin/suid", b"#!/bin/sh\n", mode=0o4755)],
        "long_name": [_file("x" * 300), _file("d/" + "y" * 5000)],
        "too_deep": [_file("/".join(["d"] * 1500) + "/f")],
        "nul_in_name": [_file("a\0" + up + victim.lstrip("/"))],
    }


KINDS = tuple(_kinds(Path("/x")))
# kinds whose every hostile entry is refused (the rest hold entries that are harmless
# inside the target: an absolute name lands under it, a fifo or setuid file stays in it)
REFUSED = ("dotdot", "hardlink_absolute", "hardlink_dotdot", "hardlink_host_file",
           "chardev", "blockdev", "whiteout_dotdot", "long_name", "too_deep")


def _tar(entries: Entries, base: Entries = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [*base, *entries]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


# ---------------------------------------------------------------- the host's view

def _tree_hash(path: Path) -> str:
    """Names, types, modes, link targets and contents of everything under ``path``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            h.update(f"{os.path.relpath(full, path)} {st.st_mode} {st.st_nlink}".encode())
            if os.path.islink(full):
                h.update(os.readlink(full).encode())
            elif os.path.isfile(full):
                h.update(Path(full).read_bytes())
    return h.hexdigest()


def _host_state(canary: Path) -> tuple[str, dict[str, str]]:
    return _tree_hash(canary), {
        p: hashlib.sha256(Path(p).read_bytes()).hexdigest() + str(os.stat(p).st_nlink)
        for p in HOST_FILES if os.path.exists(p)}


class Host:
    """A canary directory (``<base>/canary/victim``) beside a target, and the host's
    state before the attempt."""

    def __init__(self, base: Path):
        self.canary = base / "canary"
        self.canary.mkdir(parents=True)
        (self.canary / VICTIM).write_text("original\n")
        self.before = _host_state(self.canary)

    def assert_untouched(self) -> None:
        assert _host_state(self.canary) == self.before, \
            f"something outside the target changed: {sorted(os.listdir(self.canary))}"
        assert (self.canary / VICTIM).read_text() == "original\n"


@pytest.fixture
def host(tmp_path):
    # beside the target: the target is made under the same base by each test
    return Host(tmp_path / "host")


def _ok_or_clear_error(proc, daemon) -> None:
    """The command succeeded (hostile entries skipped, with warnings) or failed with a
    clear error; never an internal error, and the daemon lives on."""
    assert "internal" not in proc.err.lower(), proc.err
    assert "Traceback" not in proc.err, proc.err
    assert daemon.proc.poll() is None
    assert daemon.sbx("version", check=False).returncode == 0


# ---------------------------------------------------------------- the unpacker

@pytest.mark.parametrize("kind", KINDS)
def test_check_12_apply_layer_stays_in_its_target(kind, host, tmp_path):
    target = tmp_path / "host" / "target"
    target.mkdir()
    data = _tar(_kinds(host.canary)[kind])
    stats = apply_layer(io.BytesIO(data), target)
    host.assert_untouched()
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert not (os.path.stat.S_ISBLK(st.st_mode)
                        or (os.path.stat.S_ISCHR(st.st_mode) and st.st_rdev != 0)), \
                f"device node {name} made"
            assert st.st_nlink == 1 or os.path.stat.S_ISDIR(st.st_mode), \
                f"{name} is linked outside the layer"
    if kind in REFUSED:
        assert stats.skipped, "the hostile entries should be refused, with a reason"


def test_check_12_apply_layer_skips_a_name_too_long_with_a_reason(tmp_path):
    stats = apply_layer(io.BytesIO(_tar([_file("d/" + "y" * 5000), _file("ok")])), tmp_path)
    assert [why for _, why in stats.skipped] == ["name too long for the filesystem"]
    assert (tmp_path / "ok").read_bytes() == b"pwned\n"


# ---------------------------------------------------------------- sbx import

@pytest.mark.parametrize("kind", KINDS)
def test_check_12_import(kind, host, tmp_path, secure_daemon):
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(_tar(_kinds(host.canary)[kind]))
    ref = f"hostile-import:{kind.replace('_', '-')}"
    proc = secure_daemon.sbx("import", str(tar), ref)
    _ok_or_clear_error(proc, secure_daemon)
    assert proc.returncode == 0, proc.err      # refused entries are skipped, with warnings
    host.assert_untouched()
    if kind in REFUSED:
        assert "WARNING: not imported: " in proc.err, proc.err


def test_check_12_import_of_a_deep_tree_can_be_removed(tmp_path, secure_daemon):
    """A tree deeper than the unpacker takes is refused, so the image can be removed
    again (a 1500-deep layer once made ``sbx rmi`` fail with RecursionError)."""
    tar = tmp_path / "deep.tar"
    tar.write_bytes(_tar([_file("/".join(["d"] * 1500) + "/f"), _file("/".join(["e"] * 250)
                                                                     + "/ok")]))
    proc = secure_daemon.sbx("import", str(tar), "hostile-deep:1", check=True)
    assert "more than 256 directories deep" in proc.err
    secure_daemon.sbx("rmi", "hostile-deep:1", check=True)


# ---------------------------------------------------------------- sbx load

def _docker_save(layer: bytes, manifest: list | None = None, extra: Entries = ()) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = manifest if manifest is not None else [
        {"Config": config_name, "RepoTags": ["hostile-load:latest"],
         "Layers": ["abc/layer.tar"]}]
    return _tar([_file(config_name, config), _file("abc/layer.tar", layer), *extra,
                 _file("manifest.json", json.dumps(manifest).encode())])


def _oci_layout(layer: bytes, index: dict | None = None) -> bytes:
    def blob(data: bytes) -> tuple[str, tuple[tarfile.TarInfo, bytes]]:
        digest = hashlib.sha256(data).hexdigest()
        return "sha256:" + digest, _file("blobs/sha256/" + digest, data)
    layer_digest, layer_entry = blob(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    config_digest, config_entry = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}]}).encode()
    manifest_digest, manifest_entry = blob(manifest)
    index = index if index is not None else {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": len(manifest),
        "annotations": {"io.containerd.image.name": "docker.io/library/hostile-oci:latest"}}]}
    return _tar([_file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), layer_entry,
                 config_entry, manifest_entry, _file("index.json", json.dumps(index).encode())])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["docker-save", "oci-layout"])
def test_check_12_load_hostile_layer(form, kind, host, tmp_path, secure_daemon):
    layer = _tar(_kinds(host.canary)[kind])
    archive = tmp_path / "image.tar"
    archive.write_bytes(_docker_save(layer) if form == "docker-save" else _oci_layout(layer))
    proc = secure_daemon.sbx("load", "-i", str(archive))
    _ok_or_clear_error(proc, secure_daemon)
    assert proc.returncode == 0, proc.err
    host.assert_untouched()


# JSON nested past Python's recursion limit: json.loads raises RecursionError on it
DEEP_JSON = b"[" * 5000 + b"]" * 5000


def _hostile_metadata(canary: Path) -> dict[str, bytes]:
    layer = _tar([_file("ok")])
    victim = str(canary / VICTIM)
    up = "../" * 40
    bad_digest = "sha256:" + "../" * 10 + victim.lstrip("/")
    return {
        "manifest_layer_dotdot": _docker_save(layer, [{"Config": "x.json", "RepoTags": [],
                                                       "Layers": [up + victim.lstrip("/")]}]),
        "manifest_layer_absolute": _docker_save(layer, [{"Config": victim, "RepoTags": [],
                                                         "Layers": [victim]}]),
        "manifest_layer_symlink_out": _docker_save(
            layer, [{"Config": "x.json", "RepoTags": [], "Layers": ["lnk/layer.tar"]}],
            [(_info("lnk", type=tarfile.SYMTYPE, linkname=str(canary)), None)]),
        "manifest_blob_symlink_to_host": _docker_save(
            layer, [{"Config": "x.json", "RepoTags": [], "Layers": ["evil.tar"]}],
            [(_info("evil.tar", type=tarfile.SYMTYPE, linkname=victim), None)]),
        "manifest_symlink_loop": _docker_save(
            layer, [{"Config": "x.json", "RepoTags": [], "Layers": ["a"]}],
            [(_info("a", type=tarfile.SYMTYPE, linkname="b"), None),
             (_info("b", type=tarfile.SYMTYPE, linkname="a"), None)]),
        "index_digest_dotdot": _oci_layout(layer, {"schemaVersion": 2, "manifests": [
            {"digest": bad_digest, "size": 1}]}),
        "index_repo_tag_dotdot": _oci_layout(layer, {"schemaVersion": 2, "manifests": [
            {"digest": bad_digest, "size": 1,
             "annotations": {"io.containerd.image.name": "../../x:../y"}}]}),
        "blob_name_dotdot": _tar([_file("blobs/sha256/../../../" + victim.lstrip("/")),
                                  _file("index.json", b'{"manifests": []}')]),
        "manifest_nested_too_deep": _tar([_file("manifest.json", DEEP_JSON)]),
        "index_nested_too_deep": _tar([_file("index.json", b'{"manifests": ' + DEEP_JSON
                                             + b"}")]),
    }


def test_check_29_json_nested_too_deep_is_invalid_not_internal(secure_daemon, tmp_path):
    """A Dockerfile's CMD, a seccomp profile and a Docker API body nested 5000 levels:
    each is bad input named as such (or, for the CMD, the shell form Docker falls back
    to), never an internal error."""
    d = secure_daemon
    profile = tmp_path / "seccomp.json"
    profile.write_bytes(b'{"defaultAction": ' + DEEP_JSON + b"}")
    proc = d.sbx("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "true")
    assert proc.returncode != 0 and "not valid JSON (nested too deeply)" in proc.err, \
        proc.err
    _ok_or_clear_error(proc, d)
    (tmp_path / "Dockerfile").write_bytes(b"FROM busybox\nCMD " + DEEP_JSON + b"\n")
    proc = d.sbx("build", "-q", "-t", "sbx-deep-cmd:x", str(tmp_path))
    _ok_or_clear_error(proc, d)
    d.sbx("rmi", "sbx-deep-cmd:x")
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(d.docker_sock)
    body = b'{"Image": "busybox", "Cmd": ' + DEEP_JSON + b"}"
    conn.sendall(b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        data = conn.recv(65536)
        if not data:
            break
        reply += data
    conn.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"nested too deeply" in reply, reply[:300]


@pytest.mark.parametrize("case", tuple(_hostile_metadata(Path("/x"))))
def test_check_12_load_hostile_metadata(case, host, tmp_path, secure_daemon):
    archive = tmp_path / "image.tar"
    archive.write_bytes(_hostile_metadata(host.canary)[case])
    proc = secure_daemon.sbx("load", "-i", str(archive))
    _ok_or_clear_error(proc, secure_daemon)
    if case.startswith(("manifest_", "index_digest")):
        assert proc.returncode != 0
        assert "lacks" in proc.err or "sha256:<64" in proc.err or "not" in proc.err, proc.err
    host.assert_untouched()


# An image config's runtime fields with the wrong JSON types: each made an internal
# error at run (AttributeError, TypeError) or, stored in a container's record, made
# every later `sbx ps` fail.
ILL_TYPED = {"Env": ["PATH=/bin", 5], "Cmd": "echo hi", "Entrypoint": {"a": 1},
             "WorkingDir": 5, "Labels": ["a=b"], "Healthcheck": {"Test": "x",
                                                                 "Interval": "1s"},
             "Volumes": ["/v"], "ExposedPorts": ["80/tcp"], "Shell": 5}


def test_check_12_load_ill_typed_runtime_config(tmp_path, secure_daemon):
    d = secure_daemon
    for field, value in sorted(ILL_TYPED.items()):
        tag = f"sbx-ill-{field.lower()}"
        proc = busybox_with_config(d, tmp_path, tag, check=False, **{field: value})
        assert "internal" not in proc.err.lower() and "Traceback" not in proc.err, proc.err
        assert proc.returncode != 0 and f"config.{field}: expected" in proc.err, proc.err
        assert d.sbx("image", "inspect", tag).returncode != 0    # nothing half-loaded
    _ok_or_clear_error(proc, d)
    d.sbx("ps", "-a", check=True)


# ---------------------------------------------------------------- sbx cp

@pytest.fixture(scope="module")
def box(secure_daemon):
    """A running container for cp, its /dst holding a planted symlink to "the host's"
    directories (absolute targets mean the container's own root for cp)."""
    name = "cp-hostile"
    secure_daemon.sbx("rm", "-f", name)
    secure_daemon.sbx("run", "-d", "--name", name, "busybox", "sleep", "3600", check=True)
    try:
        yield name
    finally:
        secure_daemon.sbx("rm", "-f", name)


@pytest.mark.parametrize("kind", KINDS)
def test_check_12_cp_into_a_container(kind, host, box, secure_daemon):
    secure_daemon.sbx("exec", box, "sh", "-c",
                      f"rm -rf /dst; mkdir -p /dst; ln -s {host.canary} /dst/planted; "
                      f"ln -s {'../' * 10}{str(host.canary).lstrip('/')} /dst/rel", check=True)
    data = _tar(_kinds(host.canary)[kind])
    proc = secure_daemon.sbx("cp", "-", f"{box}:/dst", input=data)
    _ok_or_clear_error(proc, secure_daemon)
    host.assert_untouched()


def test_check_12_a_tree_deeper_than_a_layer_is_a_clear_error(secure_daemon, tmp_path):
    """A container that nests 300 directories: diff, commit and export refuse it by
    name (they once hit Python's recursion limit: a traceback, an internal error); a
    copy in of such a tree names a few of the entries it skipped, not all of them."""
    d = secure_daemon
    name = "deep-" + uuid.uuid4().hex[:6]
    d.sbx("run", "--name", name, "busybox", "sh", "-c",
          "i=0; while [ $i -lt 300 ]; do mkdir d; cd d; i=$((i+1)); done; echo x > f",
          check=True)
    try:
        for args in (["diff", name], ["commit", name, "sbx-deep:x"], ["export", name]):
            proc = d.sbx(*args)
            assert proc.returncode != 0, args
            assert "more than 256 directories deep" in proc.err and \
                len(proc.err) < 400, (args, proc.err)
        deep = tmp_path / "src"
        (deep.joinpath(*["e"] * 300)).mkdir(parents=True)
        for i in range(20):          # twenty skipped entries below the limit
            (deep.joinpath(*["e"] * 280) / f"f{i}").write_text("x")
        proc = d.sbx("cp", str(deep / "e"), f"{name}:/")
        assert proc.returncode != 0 and "more than 256 directories deep" in proc.err
        assert "more (not copied; the other entries were)" in proc.err and \
            len(proc.err) < 1000, proc.err
    finally:
        d.sbx("rm", "-f", name)
    assert "Traceback" not in d.log()


def test_check_12_a_volume_nested_past_the_recursion_limit_is_measured_and_removed(
        secure_daemon):
    """1500 levels in a volume: Python 3.11's rmtree and os.walk recurse a frame a level,
    which made the volume undeletable and system df fail (RecursionError)."""
    d = secure_daemon
    volume = "deepvol-" + uuid.uuid4().hex[:6]
    d.sbx("run", "--rm", "-v", f"{volume}:/data", "busybox", "sh", "-c",
          "cd /data; i=0; while [ $i -lt 1500 ]; do mkdir d; cd d; i=$((i+1)); done; "
          "echo x > f", check=True)
    try:
        df = d.sbx("system", "df", "-v", check=True).out
        assert any(line.split()[:1] == [volume] for line in df.splitlines()), df
    finally:
        d.sbx("volume", "rm", volume, check=True)
    left = os.listdir(os.path.join(d.root, "volumes"))
    assert not [e for e in left if e == volume or e.startswith(".")], left
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("through", ["planted", "rel", "planted/", "rel/deeper/"])
def test_check_12_cp_into_a_container_through_its_own_symlink(through, host, box, tmp_path,
                                                              secure_daemon):
    """A symlink the container planted leads into the container's root, never the host's."""
    secure_daemon.sbx("exec", box, "sh", "-c",
                      f"rm -rf /dst; mkdir -p /dst; ln -s {host.canary} /dst/planted; "
                      f"ln -s {'../' * 10}{str(host.canary).lstrip('/')} /dst/rel", check=True)
    src = tmp_path / VICTIM
    src.write_text("pwned\n")
    proc = secure_daemon.sbx("cp", str(src), f"{box}:/dst/{through}")
    _ok_or_clear_error(proc, secure_daemon)
    for name in ("", "new", "x"):
        tar = _tar([_file(name or VICTIM)])
        _ok_or_clear_error(secure_daemon.sbx("cp", "-", f"{box}:/dst/{through}", input=tar),
                           secure_daemon)
    host.assert_untouched()


def test_check_12_cp_out_of_a_container_keeps_symlinks_as_links(host, box, tmp_path,
                                                                secure_daemon):
    """Container -> host: links are copied as links, and a later copy whose tree goes
    through a link left by an earlier one is refused, not followed."""
    secure_daemon.sbx("exec", box, "sh", "-c",
                      f"rm -rf /out; mkdir -p /out; ln -s {host.canary} /out/link; "
                      f"ln -s {host.canary}/{VICTIM} /out/vlink; "
                      f"ln -s ../../../../../../..{host.canary} /out/rel", check=True)
    dest = tmp_path / "host" / "dest"
    dest.mkdir()
    secure_daemon.sbx("cp", f"{box}:/out", str(dest), check=True)
    assert os.readlink(dest / "out" / "link") == str(host.canary)
    assert os.readlink(dest / "out" / "vlink") == f"{host.canary}/{VICTIM}"
    # the links are now on the host; the container turns them into directories and
    # files with the same names, and the user copies again
    secure_daemon.sbx("exec", box, "sh", "-c",
                      f"rm -f /out/link /out/vlink /out/rel; mkdir /out/link /out/rel; "
                      f"echo pwned > /out/link/{VICTIM}; echo pwned > /out/vlink; "
                      f"echo pwned > /out/rel/{VICTIM}", check=True)
    again = secure_daemon.sbx("cp", f"{box}:/out", str(dest))
    _ok_or_clear_error(again, secure_daemon)
    assert again.returncode == 1 and "refused an entry" in again.err, again.err
    host.assert_untouched()
    # a single symlink as the source: copied as a link to a new name
    secure_daemon.sbx("exec", box, "sh", "-c", f"ln -sf {host.canary}/{VICTIM} /single",
                      check=True)
    secure_daemon.sbx("cp", f"{box}:/single", str(dest / "single"), check=True)
    assert os.path.islink(dest / "single")
    host.assert_untouched()


# ---------------------------------------------------------------- sbx build

def _build(daemon, dockerfile: str, context: bytes) -> Exception | str:
    """A build with ``context`` as the context tar, through the API as ``sbx build``
    sends it; its image id or the error it raised."""
    with connect(daemon.sock, autostart=False) as conn:
        attachment = conn.stream("image.build", {
            "dockerfile": dockerfile, "dockerfile_name": "Dockerfile", "tags": [],
            "build_args": {}, "no_cache": True, "network": "none", "target": "",
            "labels": {}})
        attachment.send(context)
        attachment.close_stdin()
        try:
            for _ in attachment:
                pass
            return attachment.result()["id"]
        except SandboxError as e:
            return e


@pytest.mark.parametrize("kind", KINDS)
def test_check_12_build_context_tar(kind, host, secure_daemon):
    result = _build(secure_daemon, "FROM busybox\nCOPY . /ctx/\n",
                    _tar(_kinds(host.canary)[kind]))
    if kind in REFUSED + ("symlink_then_file", "relative_symlink_then_file",
                          "opaque_odd_places"):
        # the context is refused whole, each bad entry named
        assert isinstance(result, SandboxError) and result.code == "invalid_argument", result
        assert "build context: " in str(result), result
    else:
        assert isinstance(result, str), result
    host.assert_untouched()
    assert secure_daemon.proc.poll() is None


@pytest.mark.parametrize("kind", KINDS)
def test_check_12_build_add_hostile_tarball(kind, host, secure_daemon):
    inner = _tar(_kinds(host.canary)[kind])
    context = _tar([_file("evil.tar", inner)])
    result = _build(secure_daemon, "FROM busybox\nADD evil.tar /add/\n"
                                   "RUN ls -laR /add > /dev/null\n", context)
    assert isinstance(result, str), result   # the hostile entries are left out of the layer
    host.assert_untouched()
    assert secure_daemon.proc.poll() is None


@pytest.mark.parametrize("source", ["link/", f"link/{VICTIM}", "vlink", "../canary",
                                    "../../canary", "/../../canary"])
def test_check_12_build_copy_from_outside_the_context(source, host, tmp_path, secure_daemon):
    """Context symlinks to outside resolve inside the context (as Docker's do), ``..``
    sources are refused; a real ``sbx build`` of a directory context."""
    ctx = tmp_path / "host" / "ctx"
    ctx.mkdir()
    (ctx / "link").symlink_to(host.canary)
    (ctx / "vlink").symlink_to(host.canary / VICTIM)
    (ctx / "Dockerfile").write_text(
        f"FROM busybox\nCOPY {source} /got\nRUN cat /got 2>/dev/null | grep -c original "
        f"&& exit 1 || true\n")
    (ctx / ".dockerignore").write_text("../canary\n/etc\n")
    proc = secure_daemon.sbx("build", "-q", "--no-cache", str(ctx))
    _ok_or_clear_error(proc, secure_daemon)
    assert proc.returncode != 0, "nothing outside the context should be found"
    host.assert_untouched()


# ---------------------------------------------------------------- pulled layers

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if REGISTRY_BIN is None:
        pytest.skip(NO_REGISTRY)
    with serve_registry(tmp_path_factory.mktemp("sbx-hostile-registry") / "open") as address:
        yield address


def _push(address: str, repo: str, layer: bytes, mutate: Callable[[dict], None] | None = None
          ) -> None:
    from sandboxd.images.registry import RegistryClient
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                            "size": len(layer)}]}
    if mutate:
        mutate(manifest)
    with RegistryClient(address) as client:
        for blob in (layer, config):
            client.upload_blob(repo, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob),
                               lambda blob=blob: io.BytesIO(blob))
        client.put_manifest(repo, "latest", json.dumps(manifest).encode(),
                            manifest["mediaType"])


@pytest.mark.parametrize("kind", KINDS)
def test_check_12_pulled_layer(kind, host, registry, secure_daemon):
    repo = f"hostile/{kind.replace('_', '-')}"
    _push(registry, repo, _tar(_kinds(host.canary)[kind]))
    proc = secure_daemon.sbx("pull", f"{registry}/{repo}:latest")
    _ok_or_clear_error(proc, secure_daemon)
    assert proc.returncode == 0, proc.err
    host.assert_untouched()
