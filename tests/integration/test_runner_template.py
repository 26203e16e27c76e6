"""Containers forked from the runner's template (ContainerSpec.entry) on the real kernel.

A probe module stands in for the pytest worker: the fork server allows ``sbx_probe:main``
only, its template imports it once, and each container's pid 1 is a clone of that
template that calls it. The probe reports what its process sees; the tests check the
clone gets what an exec'd container gets (namespaces, cgroup limits, dropped caps,
no_new_privs, fds 0-2 only) and nothing of the template's or an earlier clone's state.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest

from harness import remove_cgroup_parent
from sandboxd.errors import InvalidArgument
from sandboxd.images.host import host_rootfs
from sandboxd.runner import Runner
from sandboxd.runner.spec import ContainerSpec, Limits, Mount, Process, RootFS, Ulimit

PARENT = f"sandboxd-test-tpl-{os.getpid()}"
ENTRY = "sbx_probe:main"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_ids = itertools.count()

PROBE = '''
import json, os, resource, signal, sys

STATE = []          # a module global each clone must find as the template left it


def main():
    STATE.append(os.getpid())
    if os.environ.get("ALLOC"):
        hog = bytearray(int(os.environ["ALLOC"]))
        hog[::4096] = b"x" * len(hog[::4096])
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":" in line)
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:          # the listing's own fd, closed by now
            pass
    info = {
        "pid": os.getpid(), "state": list(STATE), "uid": os.getuid(),
        "ns": {n: os.readlink(f"/proc/self/ns/{n}")
               for n in ("pid", "mnt", "net", "ipc", "uts", "cgroup")},
        "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
        "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
        "fds": {fd: link for fd, link in fds.items() if not link.startswith("/proc/")},
        "argv": sys.argv, "path": sys.path, "environ": dict(os.environ),
        "proc_environ": open("/proc/self/environ", "rb").read().decode("utf-8", "replace"),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)), "cwd": os.getcwd(),
        "stdin": sys.stdin.read(), "marked": hasattr(json, "sbx_mark"),
        "root": sorted(os.listdir("/")),
        "sigpipe": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }
    json.sbx_mark = True           # a module of the template, changed in this clone only
    print(json.dumps(info))
    return int(os.environ.get("EXIT", "0"))
'''


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "sbx_probe.py").write_text(PROBE)
    return d


@pytest.fixture(scope="module")
def runner(tmp_path_factory, probe_dir):
    # The fork server (and its template) import from its PYTHONPATH: the probe's dir.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe_dir), saved]))
    try:
        r = Runner(state_dir=str(tmp_path_factory.mktemp("runner")), cgroup_parent=PARENT,
                   template_entries=(ENTRY,))
        r.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield r
    r.close()
    remove_cgroup_parent(PARENT)


@pytest.fixture(scope="module")
def host_root(tmp_path_factory):
    return host_rootfs(tmp_path_factory.mktemp("host-cache"))


def _spec(host_root, probe_dir, args=None, env=(), entry=ENTRY, **kw) -> ContainerSpec:
    skeleton, host_mounts = host_root
    mounts = (Mount("/tmp", "tmpfs", options=("mode=1777",)), *host_mounts,
              Mount(str(probe_dir), "bind", str(probe_dir), readonly=True),
              Mount(PACKAGE_ROOT, "bind", PACKAGE_ROOT, readonly=True))
    process_kw = {k: kw.pop(k) for k in ("ulimits", "cwd") if k in kw}
    return ContainerSpec(
        id=f"tpl{os.getpid()}-{next(_ids)}",
        process=Process(args=tuple(args or (sys.executable, "-m", "sbx_probe", "--flag")),
                        env=(f"PYTHONPATH={probe_dir}", *env), **process_kw),
        root=RootFS(lowerdirs=(str(skeleton),)), mounts=mounts, entry=entry, **kw)


def _probe(runner, spec, input=b""):
    result = runner.run(spec, input=input, timeout=60)
    assert result.exit_code == 0, result.stderr.decode()
    return json.loads(result.stdout)


def _status_of_self() -> dict[str, str]:
    return dict(line.split(":", 1) for line in
                Path("/proc/self/status").read_text().splitlines() if ":" in line)


def test_clone_is_isolated_like_an_exec(runner, host_root, probe_dir):
    info = _probe(runner, _spec(host_root, probe_dir, cwd="/tmp/work",
                                ulimits=(Ulimit("nofile", 64, 64),)), input=b"hi")
    assert info["pid"] == 1
    for name, link in info["ns"].items():
        assert link != os.readlink(f"/proc/self/ns/{name}"), f"{name} namespace is the host's"
    assert int(info["cap_eff"], 16) < int(_status_of_self()["CapEff"].strip(), 16)
    assert int(info["cap_bnd"], 16) & (1 << 21) == 0          # CAP_SYS_ADMIN dropped
    assert info["nnp"] == "1"
    assert info["seccomp"] == "2"          # the default filter, installed in the clone
    assert sorted(map(int, info["fds"])) == [0, 1, 2], info["fds"]
    assert info["nofile"] == [64, 64]
    assert info["cwd"] == "/tmp/work" and info["stdin"] == "hi"
    assert set(info["root"]) != set(os.listdir("/"))                  # its own root


def test_fresh_interpreter_state(runner, host_root, probe_dir):
    info = _probe(runner, _spec(host_root, probe_dir, env=("FOO=bar",)))
    assert info["argv"] == [str(probe_dir / "sbx_probe.py"), "--flag"]
    assert info["path"][:2] == ["/", str(probe_dir)]
    assert info["environ"]["FOO"] == "bar" and info["environ"]["HOSTNAME"]
    assert "PYTHONPATH" in info["environ"]
    assert info["sigpipe"] and info["sigint"]    # as python sets them
    # Nothing of the daemon's environment: the template started with PATH and PYTHONPATH.
    host_only = {k for k in os.environ if k not in ("PATH", "PYTHONPATH", "HOME")}
    assert not host_only & set(info["environ"])
    assert {e.partition("=")[0] for e in info["proc_environ"].split("\0") if e} <= \
        {"PATH", "PYTHONPATH"}


def test_each_clone_starts_from_the_pristine_template(runner, host_root, probe_dir):
    first = _probe(runner, _spec(host_root, probe_dir))
    second = _probe(runner, _spec(host_root, probe_dir))
    assert first["state"] == second["state"] == [1]
    assert not first["marked"] and not second["marked"]


def test_limits_apply(runner, host_root, probe_dir):
    result = runner.run(_spec(host_root, probe_dir, env=("ALLOC=400000000",),
                              limits=Limits(memory=64 << 20, memory_swap=64 << 20)),
                        timeout=60)
    assert result.oom_killed and result.exit_code == 137, result


def test_exit_code_and_init(runner, host_root, probe_dir):
    result = runner.run(_spec(host_root, probe_dir, env=("EXIT=3",), init=True), timeout=60)
    assert result.exit_code == 3
    info = json.loads(result.stdout)
    assert info["pid"] == 2 and info["state"] == [2]     # under the init, as with exec


@pytest.mark.parametrize("entry, args, env, what", [
    ("os:system", None, (), "is not one this runner allows"),
    ("sbx_probe:STATE", None, (), "is not one this runner allows"),
    (ENTRY, ("/bin/sh", "-m", "sbx_probe"), (), "the command must be"),
    (ENTRY, (sys.executable, "-m", "json.tool"), (), "the command must be"),
    (ENTRY, None, ("PYTHONHASHSEED=1",), "PYTHONHASHSEED takes effect only"),
])
def test_only_allowed_entries(runner, host_root, probe_dir, entry, args, env, what):
    with pytest.raises(InvalidArgument, match=what):
        runner.run(_spec(host_root, probe_dir, args=args, env=env, entry=entry), timeout=60)


def test_no_entries_allowed_by_default(tmp_path, host_root, probe_dir):
    with Runner(state_dir=str(tmp_path / "r"), cgroup_parent=PARENT + "-none") as r:
        with pytest.raises(InvalidArgument, match="none"):
            r.run(_spec(host_root, probe_dir), timeout=60)
    for controller in os.listdir("/sys/fs/cgroup"):
        path = Path("/sys/fs/cgroup") / controller / (PARENT + "-none")
        if path.is_dir():
            path.rmdir()


def test_another_path_to_the_same_python_is_refused(runner, host_root, probe_dir, tmp_path):
    # A venv's python is a link to its base: only the runner's own path is the template's
    # interpreter (the venv's site-packages would be missing from a clone).
    link = tmp_path / "python"
    link.symlink_to(os.path.realpath(sys.executable))
    with pytest.raises(InvalidArgument, match="the command must be"):
        runner.run(_spec(host_root, probe_dir, args=(str(link), "-m", "sbx_probe")),
                   timeout=60)


def test_a_clone_attaches_its_image_mounts(runner, host_root, probe_dir, tmp_path):
    """A capped volume (an ``image`` mount) reaches a clone the way it reaches an exec'd
    container: the fork server's detached mount comes after the stdio and the layer, pid 1
    attaches it, and no fd of it is left to the workload."""
    import dataclasses
    from sandboxd.runner import layers
    image = str(tmp_path / "volume.img")
    layers.make_image(image, layers.MIN_SIZE, str(tmp_path / "templates"))
    spec = _spec(host_root, probe_dir)
    spec = dataclasses.replace(spec, mounts=(*spec.mounts, Mount("/capped", "image", image)))
    info = _probe(runner, spec)
    assert "capped" in info["root"]
    assert sorted(map(int, info["fds"])) == [0, 1, 2], info["fds"]
