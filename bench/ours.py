"""sandboxd's side of the bench: the runner (blocking and asyncio handles) and the daemon
with its Python client and ``sbx`` CLI, each started once per bench under the bench's
temp dir and cgroup tag, and reported as "not available yet" while the module it needs
is missing or does not start."""
from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from sandboxd.runner.spec import ContainerSpec, Limits, Namespaces, Process, RootFS

from .context import MEMORY, PIDS, Bench, NotAvailable, closed_on_failure

START_TIMEOUT = 60.0


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(f"{what} not available yet ({module}: {exc})") from None


def spec(bench: Bench, net: bool, seccomp: str = "default") -> ContainerSpec:
    """The measured container: every namespace, an overlay of the busybox rootfs with a
    fresh tmpfs upper, memory and pids limits, the default seccomp filter; ``net`` false
    shares the host's network."""
    return ContainerSpec(id=bench.new_id("sbx"), process=Process(args=("/bin/true",)),
                         root=RootFS(lowerdirs=(str(bench.rootfs),)),
                         limits=Limits(memory=MEMORY, pids=PIDS),
                         namespaces=Namespaces(net="private" if net else "host"),
                         seccomp=seccomp)


def start_runner(bench: Bench) -> Any:
    """A started blocking ``Runner`` (the bench closes it at the end)."""
    runner_mod = _import("sandboxd.runner", "runner")
    if not hasattr(runner_mod, "Runner"):
        raise NotAvailable("runner not available yet (sandboxd.runner has no Runner)")
    runner = runner_mod.Runner(state_dir=str(bench.tmp / "runner"),
                               cgroup_parent=f"{bench.tag}-runner")
    try:
        runner.start()
    except Exception as exc:
        runner.close()
        raise NotAvailable(f"runner failed to start: {type(exc).__name__}: {exc}") from None
    return runner


def check_exit(cid: str, exit_code: int, detail: bytes | str = b"") -> None:
    if exit_code != 0:
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        raise RuntimeError(f"container {cid} exited {exit_code}: {text.strip()[-500:]}")


class ExitWaiter:
    """``AsyncRunner``'s exit callback: one future per container id, made before the
    spawn so an exit that arrives first is not lost."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future] = {}

    def expect(self, cid: str) -> asyncio.Future:
        self.futures[cid] = asyncio.get_running_loop().create_future()
        return self.futures[cid]

    def __call__(self, cid: str, exec_id: str | None, info: Any) -> None:
        future = self.futures.pop(cid, None)
        if future is not None and exec_id is None and not future.done():
            future.set_result(info)


async def concurrent_starts(bench: Bench, rounds: int) -> list[float]:
    """Wall seconds for ``concurrency`` containers, all requested at once from one
    ``AsyncRunner`` (the daemon's path), until every one has exited: ``rounds`` samples
    after one warm-up round."""
    runner_mod = _import("sandboxd.runner", "runner")
    if not hasattr(runner_mod, "AsyncRunner"):
        raise NotAvailable("runner not available yet (sandboxd.runner has no AsyncRunner)")
    exits = ExitWaiter()
    runner = runner_mod.AsyncRunner(exits, state_dir=str(bench.tmp / "async-runner"),
                                    cgroup_parent=f"{bench.tag}-async-runner")
    try:
        await runner.start()
    except Exception as exc:
        await runner.close()
        raise NotAvailable(f"runner failed to start: {type(exc).__name__}: {exc}") from None
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    samples = []
    try:
        for _ in range(1 + rounds):
            specs = [spec(bench, net=True) for _ in range(bench.settings.concurrency)]
            waits = [exits.expect(s.id) for s in specs]
            start = time.perf_counter()
            await asyncio.gather(*(runner.spawn(s, (null, null, null)) for s in specs))
            infos = await asyncio.gather(*waits)
            samples.append(time.perf_counter() - start)
            for s, info in zip(specs, infos):
                check_exit(s.id, info.exit_code)
    finally:
        os.close(null)
        await runner.close()
    return samples[1:]


class Daemon:
    """``sandboxd`` started by the bench with its own root and socket, the busybox image
    imported, and a client connected. ``cli(...)`` is the argv of one ``sbx`` process."""

    def __init__(self, bench: Bench) -> None:
        self.root = bench.tmp / "daemon"
        self.socket = self.root / "sandboxd.sock"
        self.host = f"unix://{self.socket}"
        self.cgroup_parent = f"{bench.tag}-daemon"     # removed with the bench's cgroups
        # Its own bridge/veth names: a daemon already running here keeps sbx0.
        self.network_prefix = f"sbxb{os.getpid() % 0x10000:04x}"
        self.log = bench.tmp / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.client: Any = None

    @classmethod
    def start(cls, bench: Bench) -> Daemon:
        api = _import("sandboxd.api", "daemon client")
        _import("sandboxd.daemon", "daemon")
        _import("sandboxd.cli.commands", "sbx CLI")
        daemon = cls(bench)
        with closed_on_failure(daemon, "daemon not available yet"):
            daemon._launch()
            daemon.client = api.Client(host=daemon.host, autostart=False)
            daemon.client.images.import_(str(bench.rootfs_tar), "busybox")
        return daemon

    def _launch(self) -> None:
        self.root.mkdir(parents=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandboxd.daemon", "--root", str(self.root),
                 "--host", self.host, "--cgroup-parent", self.cgroup_parent,
                 "--network-prefix", self.network_prefix, "--no-ip-masq"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise NotAvailable(f"daemon not available yet: it exited "
                                   f"{self.proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise NotAvailable(f"daemon not available yet: no socket at {self.socket} "
                                   f"after {START_TIMEOUT:.0f}s: {self._log_tail()}")
            time.sleep(0.01)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-500:] or "(empty)"
        except OSError:
            return "(no log)"

    def cli(self, *args: str) -> list[str]:
        # What the ``sbx`` script runs (``python -m sandboxd`` is ``sbx``).
        return [sys.executable, "-m", "sandboxd", "--host", self.host, *args]

    def pids(self) -> tuple[int, list[int]]:
        """The daemon's pid and those of its children (the fork server)."""
        from .host import children
        assert self.proc is not None
        return self.proc.pid, children(self.proc.pid)

    def close(self) -> None:
        """SIGTERM (the daemon stops its containers and fork server), SIGKILL after 15 s."""
        if self.client is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

