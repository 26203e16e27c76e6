"""The other runtimes, each reduced to: is it here, set it up, the command for one run.

Every peer runs ``/bin/true`` from the same busybox rootfs with pid/mount/uts/ipc
namespaces and, when ``net`` is true, a new network namespace. What else each one does
(its ``does`` text) is printed under the table, because the rows are only as comparable
as the work behind them:

- ``unshare``: namespaces, chroot into the rootfs, a fresh /proc. No limits, no /dev.
- ``bwrap``: the rootfs bound read-only as /, /proc, a small /dev, our capability set.
  No cgroup limits (bubblewrap has none).
- ``crun`` / ``runc``: an OCI bundle from :mod:`bench.oci` (read-only root, /proc /dev
  /dev/pts /dev/shm /sys, masked paths, memory + pids limits in a v1 cgroup).
- ``podman`` / ``docker``: the rootfs imported as an image, ``--rm``, the same limits.

None of them makes an overlay with a fresh upper layer; our runner does.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from . import host, oci
from .context import MEMORY, PIDS, Bench, NotAvailable

IMAGE = "sandboxd-bench-busybox"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


class Peer:
    """One runtime. ``launcher`` prefixes the timing worker when runs must happen in a
    prepared environment (crun); empty means runs are spawned by the bench itself."""
    name = ""
    binary = ""
    does = ""

    def missing(self) -> str | None:
        """Why this runtime cannot run here, or None."""
        return None if shutil.which(self.binary) else "not installed"

    def version(self) -> str:
        return _version([self.binary, "--version"])

    @property
    def launcher(self) -> list[str]:
        return []

    def setup(self, bench: Bench) -> None:
        """Once per bench, before the first run (outside timing)."""

    def run(self, bench: Bench, net: bool) -> dict:
        """One run for :mod:`bench.measure`: ``{"argv": ..., "cleanup": ...}``."""
        raise NotImplementedError

    def teardown(self, bench: Bench) -> list[str]:
        """Remove what setup and the runs left; return what had to be cleaned up."""
        return []


class Unshare(Peer):
    name, binary = "unshare", "unshare"
    does = "namespaces + chroot + /proc; no limits, no /dev"

    def run(self, bench: Bench, net: bool) -> dict:
        return {"argv": ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc",
                         *(["--net"] if net else []), f"--root={bench.rootfs}",
                         "--mount-proc", "/bin/true"], "cleanup": None}


class Bwrap(Peer):
    name, binary = "bwrap", "bwrap"
    does = "namespaces + read-only bind root + /proc + /dev + caps; no cgroup limits"

    def run(self, bench: Bench, net: bool) -> dict:
        caps = [a for c in bench.capabilities for a in ("--cap-add", f"CAP_{c}")]
        return {"argv": ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                         *(["--unshare-net"] if net else []), "--cap-drop", "ALL", *caps,
                         "--ro-bind", str(bench.rootfs), "/", "--proc", "/proc",
                         "--dev", "/dev", "/bin/true"], "cleanup": None}


class OCIRuntime(Peer):
    """crun and runc: one bundle per container (its cgroup path must be unique when runs
    overlap), state under the bench's temp dir, container ids from the bench."""
    does = ("OCI bundle: read-only root, /proc /dev /sys, masked paths, memory+pids cgroup "
            "(limits read back from a created container's cgroup before timing)")

    def state(self, bench: Bench) -> Path:
        return bench.tmp / f"{self.name}-state"

    def command(self, bench: Bench, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state(bench)), *args]

    def bundle(self, bench: Bench, cid: str, args: list[str], net: bool) -> Path:
        doc = oci.config(bench.rootfs, args, net=net, memory=MEMORY, pids=PIDS,
                         cgroups_path=host.path(bench.tag, cid))
        return oci.write_bundle(bench.tmp / "bundles" / cid, doc)

    def run(self, bench: Bench, net: bool) -> dict:
        cid = bench.new_id(self.name)
        bundle = self.bundle(bench, cid, ["/bin/true"], net)
        return {"argv": self.command(bench, "run", "--bundle", str(bundle), cid),
                "cleanup": self.command(bench, "delete", "--force", cid)}

    def setup(self, bench: Bench) -> None:
        self.check_limits(bench)

    def check_limits(self, bench: Bench) -> None:
        """Create (not start) one container and read its cgroup from the host: the
        runtime must have written our memory and pids limits, or its rows mean nothing."""
        cid = bench.new_id(self.name)
        bundle = self.bundle(bench, cid, ["/bin/true"], net=True)
        create = self.launcher + self.command(bench, "create", "--bundle", str(bundle), cid)
        # stderr to a file: the created container's init holds it open until deleted.
        with tempfile.TemporaryFile() as err:
            code = subprocess.run(create, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=60).returncode
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        try:
            if code != 0:
                raise NotAvailable(f"{self.name} create failed: {message}")
            found = host.limits(host.path(bench.tag, cid))
            if found != {"memory": MEMORY, "pids": PIDS}:
                raise NotAvailable(f"{self.name} did not apply the limits: cgroup has "
                                   f"{found}, wanted memory={MEMORY} pids={PIDS}")
        finally:
            subprocess.run(self.launcher + self.command(bench, "delete", "--force", cid),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)

    def teardown(self, bench: Bench) -> list[str]:
        if not self.state(bench).exists():
            return []
        out = subprocess.run(self.launcher + self.command(bench, "list", "--quiet"),
                             capture_output=True, text=True, timeout=60).stdout.split()
        for cid in out:
            subprocess.run(self.launcher + self.command(bench, "delete", "--force", cid),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        return [f"{self.name} container {cid}" for cid in out]


class Crun(OCIRuntime):
    name, binary = "crun", "crun"

    @property
    def launcher(self) -> list[str]:
        # crun 1.8 refuses hybrid cgroups; with the cgroup2 mount gone from a private
        # mount namespace it sees plain v1 (PEERS.md). The host keeps its mount.
        if host.mode() != "hybrid":
            return []
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified && exec "$@"', "sh"]


class Runc(OCIRuntime):
    name, binary = "runc", "runc"


class Podman(Peer):
    """podman with runc (its default crun hits the hybrid-cgroup refusal) and rlimits
    within this root's hard limits (PEERS.md). Storage under the bench's temp dir."""
    name, binary = "podman", "podman"
    does = "image + --rm, runc, memory+pids limits, --network none/host"

    def command(self, bench: Bench, *args: str) -> list[str]:
        return ["podman", "--root", str(bench.tmp / "podman"),
                "--runroot", str(bench.tmp / "podman-run"), "--runtime", "runc", *args]

    def setup(self, bench: Bench) -> None:
        proc = subprocess.run(self.command(bench, "import", str(bench.rootfs_tar), IMAGE),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NotAvailable(f"podman import failed: {proc.stderr.strip()}")

    def run(self, bench: Bench, net: bool) -> dict:
        cid = bench.new_id(self.name)
        return {"argv": self.command(
                    bench, "run", "--rm", "--name", cid, "--network", "none" if net else "host",
                    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                    "--memory", str(MEMORY), "--pids-limit", str(PIDS), IMAGE, "/bin/true"),
                "cleanup": self.command(bench, "rm", "--force", cid)}

    def teardown(self, bench: Bench) -> list[str]:
        left = subprocess.run(self.command(bench, "ps", "--all", "--quiet"),
                              capture_output=True, text=True, timeout=60).stdout.split()
        for cid in left:
            subprocess.run(self.command(bench, "rm", "--force", cid), capture_output=True)
        subprocess.run(self.command(bench, "rmi", "--force", IMAGE), capture_output=True)
        return [f"podman container {cid}" for cid in left]


class Docker(Peer):
    """docker, only when a local dockerd is already running (the bench does not start
    or install one). Always the local socket: nothing leaves this machine."""
    name, binary = "docker", "docker"
    does = "image + --rm, memory+pids limits, --network none/host"
    SOCKET = "/var/run/docker.sock"

    def missing(self) -> str | None:
        if not shutil.which("docker"):
            return "not installed"
        if not Path(self.SOCKET).exists():
            return f"not installed (no dockerd at {self.SOCKET})"
        return None

    def command(self, *args: str) -> list[str]:
        return ["docker", "--host", f"unix://{self.SOCKET}", *args]

    def version(self) -> str:
        return _version(self.command("version", "--format", "{{.Server.Version}}"))

    def setup(self, bench: Bench) -> None:
        proc = subprocess.run(self.command("import", str(bench.rootfs_tar), IMAGE),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NotAvailable(f"docker import failed: {proc.stderr.strip()}")

    def run(self, bench: Bench, net: bool) -> dict:
        cid = bench.new_id(self.name)
        return {"argv": self.command(
                    "run", "--rm", "--name", cid, "--network", "none" if net else "host",
                    "--memory", str(MEMORY), "--pids-limit", str(PIDS), IMAGE, "/bin/true"),
                "cleanup": self.command("rm", "--force", cid)}

    def teardown(self, bench: Bench) -> list[str]:
        left = subprocess.run(self.command("ps", "--all", "--quiet", "--filter",
                                           f"name={bench.tag}"),
                              capture_output=True, text=True, timeout=60).stdout.split()
        for cid in left:
            subprocess.run(self.command("rm", "--force", cid), capture_output=True)
        subprocess.run(self.command("rmi", "--force", IMAGE), capture_output=True)
        return [f"docker container {cid}" for cid in left]


PEERS: tuple[Peer, ...] = (Unshare(), Bwrap(), Crun(), Runc(), Podman(), Docker())
