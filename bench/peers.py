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
  Their bridge rows (:mod:`bench.cases_network`): docker's default network; for podman
  a bench CNI network that leaves forwarding and NAT off (:class:`Podman`).

None of them makes an overlay with a fresh upper layer; our runner does.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
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


class ImagePeer(Peer):
    """podman and docker: the rootfs imported as an image, ``run --rm`` with the same
    limits. ``bridge_run`` is one run on the runtime's bridge network (the network rows);
    ``run`` uses ``--network none`` / ``host`` like every other peer."""
    bridge_label = "default network"

    def command(self, bench: Bench, *args: str) -> list[str]:
        raise NotImplementedError

    def bridge(self, bench: Bench) -> str | None:
        """The ``--network`` of a bridge run; None: the runtime's default network."""
        return None

    def container(self, bench: Bench, network: str | None) -> dict:
        raise NotImplementedError

    def run(self, bench: Bench, net: bool) -> dict:
        return self.container(bench, "none" if net else "host")

    def bridge_run(self, bench: Bench) -> dict:
        return self.container(bench, self.bridge(bench))


class Podman(ImagePeer):
    """podman with runc (its default crun hits the hybrid-cgroup refusal) and rlimits
    within this root's hard limits (PEERS.md). Storage, run and tmp dirs and its network
    config dir are under the bench's temp dir; container cgroups under ``/<tag>``.

    The bridge rows use a CNI network of the bench's own (name: the bench's tag, bridge
    ``sbxp<pid>``), not podman's default ``podman`` network: that one has ``isGateway``
    (the bridge plugin then writes ``net.ipv4.ip_forward=1``), ``ipMasq`` (a nat chain
    with MASQUERADE per container) and the firewall plugin (FORWARD rules), and this
    machine keeps forwarding and NAT off. Ours is the same bridge + host-local IPAM +
    portmap + tuning chain without those three, so podman does a little less per run
    than with its default network: its bridge rows are a lower bound. CNI and podman
    still make a few things outside the temp dir (the bridge, ``/var/lib/cni``, the
    image blob cache in ``/var/lib/containers``, a ``/run/netns`` bind mount); teardown
    removes what was not there before, and puts ``ip_forward`` back if it changed."""
    name, binary = "podman", "podman"
    bridge_label = "bench CNI bridge (no NAT)"
    does = ("image + --rm, runc, memory+pids limits (read back from a created container's "
            "cgroup before timing), --network none/host; bridge rows: a bench CNI bridge "
            "without gateway address, masquerade or firewall rules (forwarding stays off)")
    SUBNET, GATEWAY = "10.88.0.0/16", "10.88.0.1"     # podman's default network's
    HOST_DIRS = (Path("/var/lib/cni"), Path("/var/lib/containers"), Path("/run/netns"))
    FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
    DEFAULT_BRIDGE = "cni-podman0"

    def __init__(self) -> None:
        self._before: dict = {}

    def missing(self) -> str | None:
        if not shutil.which("podman"):
            return "not installed"
        if not shutil.which("runc"):
            return "not installed: runc (podman's crun refuses hybrid cgroups here)"
        return None

    def version(self) -> str:
        return f"{_version(['podman', '--version'])}, {_version(['runc', '--version'])}"

    def dir(self, bench: Bench) -> Path:
        return bench.tmp / "podman"

    def bridge(self, bench: Bench) -> str:
        return bench.tag           # the CNI network's name

    def bridge_link(self) -> str:
        return f"sbxp{os.getpid() % 0x10000:04x}"

    def command(self, bench: Bench, *args: str) -> list[str]:
        d = self.dir(bench)
        return ["podman", "--root", str(d / "root"), "--runroot", str(d / "run"),
                "--tmpdir", str(d / "tmp"), "--network-config-dir", str(d / "net"),
                "--runtime", "runc", *args]

    def options(self, bench: Bench, network: str) -> list[str]:
        return ["--network", network, "--cgroup-parent", f"/{bench.tag}",
                "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                "--memory", str(MEMORY), "--pids-limit", str(PIDS)]

    def container(self, bench: Bench, network: str | None) -> dict:
        cid = bench.new_id(self.name)
        return {"argv": self.command(bench, "run", "--rm", "--name", cid,
                                     *self.options(bench, network or self.bridge(bench)),
                                     IMAGE, "/bin/true"),
                "cleanup": self.command(bench, "rm", "--force", cid)}

    def setup(self, bench: Bench) -> None:
        self._before = {"forward": self.FORWARD.read_text().strip(),
                        "dirs": [d for d in self.HOST_DIRS if d.exists()],
                        "links": _links(), "iptables": _cni_rules()}
        net = self.dir(bench) / "net"
        net.mkdir(parents=True)
        (net / f"{self.bridge(bench)}.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": self.bridge(bench),
            "plugins": [
                {"type": "bridge", "bridge": self.bridge_link(), "isGateway": False,
                 "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                          "ranges": [[{"subnet": self.SUBNET, "gateway": self.GATEWAY}]]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "tuning"}]}, indent=1))
        proc = subprocess.run(self.command(bench, "import", str(bench.rootfs_tar), IMAGE),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NotAvailable(f"podman import failed: {proc.stderr.strip()}")
        self.check_limits(bench)

    def check_limits(self, bench: Bench) -> None:
        """Create and init (runc create: the cgroup exists, nothing runs yet) one
        container and read its cgroup: podman must have written our limits."""
        proc = subprocess.run(self.command(bench, "create", *self.options(bench, "none"),
                                           IMAGE, "/bin/true"),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise NotAvailable(f"podman create failed: {proc.stderr.strip()}")
        cid = proc.stdout.strip()
        try:
            proc = subprocess.run(self.command(bench, "init", cid), capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode != 0:
                raise NotAvailable(f"podman init failed: {proc.stderr.strip()}")
            found = host.limits(host.path(bench.tag, f"libpod-{cid}"))
            if found != {"memory": MEMORY, "pids": PIDS}:
                raise NotAvailable(f"podman did not apply the limits: cgroup has {found}, "
                                   f"wanted memory={MEMORY} pids={PIDS}")
        finally:
            subprocess.run(self.command(bench, "rm", "--force", "--time", "0", cid),
                           capture_output=True, timeout=120)

    def teardown(self, bench: Bench) -> list[str]:
        if not self._before:
            return []
        report: list[str] = []
        left = subprocess.run(self.command(bench, "ps", "--all", "--quiet"),
                              capture_output=True, text=True, timeout=60).stdout.split()
        for cid in left:
            subprocess.run(self.command(bench, "rm", "--force", "--time", "0", cid),
                           capture_output=True, timeout=120)
        report += [f"podman container {cid}" for cid in left]
        subprocess.run(self.command(bench, "rmi", "--force", IMAGE), capture_output=True,
                       timeout=120)
        report += self._wait_for_exits(bench)
        # conmon's cgroup (cgroupfs manager: <parent>/conmon) is podman's, not a run's.
        for top in host.hierarchies():
            with contextlib.suppress(OSError):
                (top / bench.tag / "conmon").rmdir()
        report += self._restore_host(bench)
        self._before = {}
        return report

    def _wait_for_exits(self, bench: Bench, patience: float = 30.0) -> list[str]:
        """conmon outlives ``run --rm`` a little (it runs podman's exit command, which
        tears the network down): wait for every process that names the bench's podman
        dirs before the host is cleaned, SIGKILL the ones still there after ``patience``."""
        deadline = time.monotonic() + patience
        while (pids := _processes_naming(str(self.dir(bench)))) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"podman process {pid} (killed after {patience:.0f}s)" for pid in pids]

    def _restore_host(self, bench: Bench) -> list[str]:
        """Undo what CNI and podman did outside the temp dir (see the class doc)."""
        report = []
        links = _links()
        for link in (self.bridge_link(), self.DEFAULT_BRIDGE):
            if link in links and link not in self._before["links"]:
                subprocess.run(["ip", "link", "delete", link], capture_output=True)
                if link == self.DEFAULT_BRIDGE:    # only a run without --network makes it
                    report.append(f"podman's default bridge {link}")
        shutil.rmtree(Path("/var/lib/cni/networks", self.bridge(bench)), ignore_errors=True)
        for d in self.HOST_DIRS:
            if d in self._before["dirs"] or not d.exists():
                continue
            if d.name == "netns":      # podman bind-mounts it on itself; keep it if in use
                if any(d.iterdir()):
                    continue
                subprocess.run(["umount", str(d)], capture_output=True)
                with contextlib.suppress(OSError):
                    d.rmdir()
            else:
                shutil.rmtree(d, ignore_errors=True)
        if self.FORWARD.read_text().strip() != self._before["forward"]:
            self.FORWARD.write_text(self._before["forward"])
            report.append(f"net.ipv4.ip_forward (set back to {self._before['forward']})")
        report += [f"NOT REMOVED: iptables {rule}"
                   for rule in _cni_rules() if rule not in self._before["iptables"]]
        return report


def _processes_naming(text: str) -> list[int]:
    """Pids of the processes (not this one) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _cni_rules() -> list[str]:
    """CNI's iptables chains and rules (none expected: the bench network has no
    masquerade or firewall plugin; this is the check)."""
    try:
        out = subprocess.run(["iptables-save"], capture_output=True, text=True,
                             timeout=30).stdout
    except OSError:
        return []
    return [line for line in out.splitlines() if "CNI" in line]


class Docker(ImagePeer):
    """docker, only when a local dockerd is already running (the bench does not start
    or install one). Always the local socket: nothing leaves this machine. Its bridge
    rows use docker's default network as that dockerd has it."""
    name, binary = "docker", "docker"
    does = "image + --rm, memory+pids limits, --network none/host; bridge rows: its default"
    SOCKET = "/var/run/docker.sock"

    def missing(self) -> str | None:
        if not shutil.which("docker"):
            return "not installed"
        if not Path(self.SOCKET).exists():
            return f"not installed (no dockerd at {self.SOCKET})"
        return None

    def command(self, bench: Bench | None, *args: str) -> list[str]:
        return ["docker", "--host", f"unix://{self.SOCKET}", *args]

    def version(self) -> str:
        return _version(self.command(None, "version", "--format", "{{.Server.Version}}"))

    def setup(self, bench: Bench) -> None:
        proc = subprocess.run(self.command(bench, "import", str(bench.rootfs_tar), IMAGE),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NotAvailable(f"docker import failed: {proc.stderr.strip()}")

    def container(self, bench: Bench, network: str | None) -> dict:
        cid = bench.new_id(self.name)
        return {"argv": self.command(
                    bench, "run", "--rm", "--name", cid,
                    *(["--network", network] if network else []),
                    "--memory", str(MEMORY), "--pids-limit", str(PIDS), IMAGE, "/bin/true"),
                "cleanup": self.command(bench, "rm", "--force", cid)}

    def teardown(self, bench: Bench) -> list[str]:
        left = subprocess.run(self.command(bench, "ps", "--all", "--quiet", "--filter",
                                           f"name={bench.tag}"),
                              capture_output=True, text=True, timeout=60).stdout.split()
        for cid in left:
            subprocess.run(self.command(bench, "rm", "--force", cid), capture_output=True)
        subprocess.run(self.command(bench, "rmi", "--force", IMAGE), capture_output=True)
        return [f"docker container {cid}" for cid in left]


PEERS: tuple[Peer, ...] = (Unshare(), Bwrap(), Crun(), Runc(), Podman(), Docker())
