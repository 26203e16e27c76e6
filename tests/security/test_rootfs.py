"""What the container's process starts with and what its image can do to the start
(CHECKS.md 9 and 11): the fd census of pid 1 and of exec'd processes, a workdir through
/proc/self/fd, and hostile images whose /proc, /sys or /dev/null are symlinks, or whose
bind targets climb with ``../..``."""
from __future__ import annotations

import os
import tarfile
import uuid
from pathlib import Path

import pytest

from sandboxd import testing

# Each fd of the shell (listed by ls, a child: its own fds are not the shell's), then
# getcwd. No pipeline: while ``ls | awk`` starts, the shell itself briefly holds the
# pipe's read end, which the census would then report as a leak.
CENSUS = "ls -l /proc/$$/fd; echo \"CWD $(pwd -P)\""


def _census(out: str) -> tuple[dict[int, str], str]:
    fds, cwd = {}, ""
    for line in out.splitlines():
        if " -> " in line:                          # ls -l: "... 3 -> pipe:[123]"
            fields = line.split()
            fds[int(fields[-3])] = fields[-1]
        elif line.startswith("CWD "):
            cwd = line[4:]
    return fds, cwd


def _only_stdio(fds: dict[int, str]) -> None:
    extra = {n: t for n, t in fds.items() if n > 2}
    assert not extra, f"fds beyond 0-2: {extra}"
    assert {0, 1, 2} <= set(fds)
    for target in fds.values():
        assert "netlink" not in target and not target.startswith(("/run", "/var", "/tmp/"))


def test_check_09_fd_census_pid1_and_exec(secure_daemon):
    d = secure_daemon
    fds, cwd = _census(d.sbx("run", "--rm", "busybox", "sh", "-c", CENSUS, check=True).out)
    _only_stdio(fds)
    assert cwd == "/"
    name = "fds-" + uuid.uuid4().hex[:6]
    d.sbx("run", "-d", "--name", name, "-w", "/tmp", "busybox", "sleep", "600", check=True)
    try:
        out = d.sbx("exec", name, "sh", "-c", CENSUS + "; ls -l /proc/1/fd | grep -c -- '->'",
                    check=True).out
        fds, cwd = _census(out)
        _only_stdio(fds)
        assert cwd == "/tmp"
        assert int(out.split()[-1]) <= 3          # pid 1 (sleep): 0, 1, 2 only
    finally:
        d.sbx("rm", "-f", name)


@pytest.mark.parametrize("workdir", ["/proc/self/fd/3", "/proc/1/cwd", "/proc/self/cwd/..",
                                     "/tmp/../proc/self/fd/4"])
def test_check_09_workdir_through_proc_is_refused(secure_daemon, workdir):
    d = secure_daemon
    before = d.ids("-a")
    run = d.sbx("run", "--rm", "-w", workdir, "busybox", "pwd")
    assert run.returncode != 0 and ("workdir" in run.err or "cwd" in run.err), run.err
    assert d.ids("-a") == before                      # refused before anything started


def _hostile_image(d, tmp: Path, name: str, links: dict[str, str]) -> None:
    """busybox with ``links`` (path -> symlink target) in place of its entries."""
    out = tmp / f"{name}.tar"
    with tarfile.open(testing.busybox_tar()) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            top = member.name.rstrip("/")
            if any(top == p or top.startswith(p + "/") for p in links):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for path, target in links.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            dst.addfile(info)
    d.sbx("import", str(out), name, check=True)


@pytest.mark.parametrize("links", [{"proc": "/tmp"}, {"proc": "../../../../etc"},
                                   {"sys": "/etc"}, {"dev": "/tmp"}])
def test_check_11_kernel_fs_symlink_stops_the_start(secure_daemon, tmp_path, links):
    d = secure_daemon
    name = "hostile-" + uuid.uuid4().hex[:6]
    _hostile_image(d, tmp_path, name, links)
    try:
        before = set(os.listdir("/tmp")), set(os.listdir("/etc"))
        run = d.sbx("run", "--rm", name, "true")
        where = next(iter(links))
        assert run.returncode != 0 and f"/{where} is a symlink" in run.err, run.err
        assert (set(os.listdir("/tmp")), set(os.listdir("/etc"))) == before
    finally:
        d.sbx("rmi", "-f", name)


def test_check_11_dev_null_symlink_is_replaced(secure_daemon, tmp_path):
    d = secure_daemon
    name = "hostile-" + uuid.uuid4().hex[:6]
    _hostile_image(d, tmp_path, name, {"dev/null": "/etc/passwd"})
    try:
        passwd = Path("/etc/passwd").read_bytes()
        out = d.sbx("run", "--rm", name, "sh", "-c",
                    "ls -ln /dev/null; echo x > /dev/null; echo ok", check=True).out
        assert out.startswith("crw") and " 1,   3 " in out.splitlines()[0], out
        assert Path("/etc/passwd").read_bytes() == passwd
    finally:
        d.sbx("rmi", "-f", name)


@pytest.mark.parametrize("target", ["/../../../../tmp/{tag}", "/etc/../../../tmp/{tag}",
                                    "/bin/../../..{tmp}/{tag}"])
def test_check_11_bind_target_climbing_stays_inside(secure_daemon, tmp_path, target):
    d = secure_daemon
    tag = "climb-" + uuid.uuid4().hex[:6]
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("m")
    target = target.format(tag=tag, tmp=str(tmp_path))
    run = d.sbx("run", "--rm", "-v", f"{src}:{target}", "busybox", "sh", "-c",
                f"cat /tmp/{tag}/marker 2>/dev/null; true")
    # Refused as a bad mount, or mounted inside the container's root: never on the host.
    assert run.returncode != 0 or run.out in ("m", "")
    assert not os.path.exists(f"/tmp/{tag}")
    assert not os.path.exists(f"{tmp_path}/{tag}")
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if tag in line]
