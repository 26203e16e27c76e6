"""Pre-started sandboxed kernels: the provisioner's pool (kernelspec config ``pool: N``).

A daemon container pool parks containers *before exec*, so a kernel taken from one would
still pay Python's and ipykernel's start-up (about half a second). This pool keeps
kernels that are already running: N containers per container configuration, each with
ipykernel started and listening on its own ipc sockets (its own private directory,
connection file and key). A launch whose container would be configured exactly as a
pooled one takes it; jupyter_client then adopts the pooled kernel's connection info (the
provisioner returns it from ``launch_kernel``: ``KernelManager._reconcile_connection_info``
rewrites the manager's connection file and session key with it). Every launch for a
configuration refills its pool in a background thread, one start at a time.

Limits (docs/notebooks.md):

- The pool lives in the process that starts kernels (nbclient, papermill, a Jupyter
  server, a test session): its first launch of a configuration is cold and fills the
  pool, later ones are hits.
- A pooled kernel's environment, working directory and command are fixed when it starts:
  the key is the whole container configuration the cold path would use, so a launch
  with another env (``JPY_SESSION_NAME``, say, which a Jupyter server sets per notebook)
  or another working directory is a miss and starts cold, unchanged.
- While the pool still holds a kernel for the next launch, the refill after a take waits
  until the kernel taken has ended (:meth:`KernelPool.release`), at most
  ``REFILL_DEFER`` seconds: a kernel's start-up (~0.5 s of CPU, and this process's GIL
  for its start request) would otherwise compete with the new kernel's first requests
  and its client's shutdown. A take that empties the pool refills at once.
- Once its sockets are bound, a pooled kernel is warmed (:func:`_warm`): a client that
  then goes away asks it for its kernel_info and runs silent code (no history, no
  execution count) that grows the kernel's fd table (``GROW_FD_TABLE``), so its first
  requests on the notebook's connections pay neither ipykernel's first-request costs
  (~10 ms of a two-cell run) nor the kernel's wait for the bigger table (8-16 ms).
- A process keeps kernels ready for at most ``MAX_POOLS`` configurations, the most
  recently asked for, and closes a pool not asked for in ``POOL_IDLE`` seconds (its
  kernels killed): a Jupyter server sets ``JPY_SESSION_NAME`` per notebook, so each
  notebook opened is a configuration of its own, and without a bound each one left
  ``pool`` idle kernels (~60 MiB each) until the server exited.
- A kernel is used once and never returned; a pooled kernel that dies while parked is
  dropped. If a pooled start fails, the pool stops refilling (the cold path reports
  what is wrong, in the user's terms) until the process restarts.
- The pool's kernels ride one daemon session of this process: the daemon removes them
  if it dies; at exit they are killed and their directories removed.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from jupyter_client.connect import write_connection_file

log = logging.getLogger(__name__)

CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
OUTPUT_KEPT = 64 * 1024
REFILL_DEFER = 2.0   # seconds a refill may wait for the kernel just taken to end
MAX_POOLS = 4        # configurations a process keeps kernels ready for (the most recent)
POOL_IDLE = 600.0    # seconds a pool not asked for keeps its kernels


class Owner(Protocol):
    """Who gets a kernel container's stream events: the pool while the kernel is
    parked, the provisioner once it took it."""

    def on_event(self, event: str, data: Any) -> None: ...

    def on_end(self, end: dict[str, Any] | None, error: BaseException | None) -> None: ...


class KernelStream:
    """A kernel container's ``container.run`` stream, read by a thread of its own that
    hands each event to its current owner; :meth:`hand_to` changes the owner between two
    events."""

    def __init__(self, stream: Any, owner: Owner, name: str):
        self.stream = stream
        self.owner = owner
        self.ended = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def _run(self) -> None:
        end: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            for event, data in self.stream:
                with self.lock:
                    self.owner.on_event(event, data)
            end = dict(self.stream.result())
        except BaseException as exc:        # noqa: B036 -- the owner reports it
            error = exc
        with self.lock:
            self.ended = True
            owner = self.owner
        owner.on_end(end, error)

    def hand_to(self, owner: Owner) -> bool:
        """The events from now on go to ``owner``; False if the stream already ended."""
        with self.lock:
            if self.ended:
                return False
            self.owner = owner
            return True


class PooledKernel:
    """One started kernel waiting in a pool: its directory, connection info and stream."""

    def __init__(self, directory: str, info: dict[str, Any]):
        self.directory = directory
        self.info = info                    # connection info; "key" as bytes
        self.container_id = ""
        self.output = bytearray()           # the kernel's own output while parked
        self.stream: KernelStream | None = None
        self.dead: dict[str, Any] | BaseException | None = None

    def on_event(self, event: str, data: Any) -> None:
        if event == "created":
            self.container_id = data["id"]
        elif event in ("stdout", "stderr"):
            self.output += data
            del self.output[:-OUTPUT_KEPT]

    def on_end(self, end: dict[str, Any] | None, error: BaseException | None) -> None:
        self.dead = error if error is not None else (end or {})
        shutil.rmtree(self.directory, ignore_errors=True)

    def bound(self) -> bool:
        return all(os.path.exists(f"{self.info['ip']}-{self.info[c]}") for c in CHANNELS)


class KernelPool:
    """The started kernels of one container configuration (``template``: the config
    dict with ``{connection_file}`` and ``{kernel_dir}`` placeholders)."""

    def __init__(self, template: str, size: int, client: Any, parent_dir: str,
                 session: dict[str, Any], start_timeout: float):
        self.template = template
        self.size = size
        self.client = client
        self.parent_dir = parent_dir
        self.session = session              # signature_scheme and kernel_name
        self.start_timeout = start_timeout
        self.ready: list[PooledKernel] = []
        self.lock = threading.Lock()
        self.filling: threading.Thread | None = None    # None once it decided to stop
        self.wake = threading.Event()       # a deferred refill may start now
        self.failed = ""                    # why a pooled start failed: no more refills
        self.closed = False
        self.last_used = time.monotonic()   # the last launch that asked for it

    def take(self) -> PooledKernel | None:
        """A started kernel, or None (empty pool)."""
        with self.lock:
            while self.ready:
                kernel = self.ready.pop(0)
                if kernel.dead is None:
                    return kernel
        return None

    def refill(self, defer: bool = False) -> None:
        """Start kernels in the background until ``size`` are ready. ``defer``: a kernel
        was just taken; while another is still ready, wait for :meth:`release` (at most
        REFILL_DEFER seconds) before starting, so as not to compete with it for CPU."""
        with self.lock:
            if self.closed or self.failed:
                return
            deferred = defer and any(k.dead is None for k in self.ready)
            if not deferred:
                self.wake.set()
            if self.filling is not None:
                return                          # the running refill covers this one too
            if deferred:
                self.wake.clear()
            self.filling = threading.Thread(target=self._fill, daemon=True,
                                            name="sandboxd-kernel-pool")
            self.filling.start()

    def release(self) -> None:
        """A kernel taken from this pool has ended: a deferred refill starts now."""
        self.wake.set()

    def _fill(self) -> None:
        self.wake.wait(REFILL_DEFER)
        while True:
            with self.lock:
                self.ready = [k for k in self.ready if k.dead is None]
                if self.closed or len(self.ready) >= self.size:
                    self.filling = None
                    return
            try:
                kernel = self._start()
            except Exception as exc:         # noqa: BLE001 -- the cold path reports it
                with self.lock:
                    self.failed = str(exc) or type(exc).__name__
                    self.filling = None
                    if self.closed:              # its session ended under it: no news
                        return
                log.warning("sandboxd kernel pool: a pooled kernel did not start (%s); "
                            "launches start cold", self.failed)
                return
            with self.lock:
                if self.closed:
                    self.filling = None
                    _kill(self.client, kernel)
                    shutil.rmtree(kernel.directory, ignore_errors=True)
                    return
                self.ready.append(kernel)

    def _start(self) -> PooledKernel:
        directory = tempfile.mkdtemp(prefix="sbxk-", dir=self.parent_dir)     # 0700
        try:
            return self._start_in(directory)
        except BaseException:            # e.g. this process exits while it starts
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _start_in(self, directory: str) -> PooledKernel:
        key = str(uuid.uuid4()).encode()
        path, info = write_connection_file(
            os.path.join(directory, "kernel-pooled.json"), transport="ipc",
            ip=os.path.join(directory, "k"), key=key, **self.session)
        info = dict(info, key=key)
        config = json.loads(self.template.replace("{connection_file}", path)
                            .replace("{kernel_dir}", directory))
        kernel = PooledKernel(directory, info)
        stream = self.client.stream("container.run", {"config": config, "stdin": False,
                                                      "remove": True, "detach": False})
        kernel.stream = KernelStream(stream, kernel, "sandboxd-pooled-kernel")
        deadline = time.monotonic() + self.start_timeout
        while not kernel.bound():
            if kernel.dead is not None:
                tail = kernel.output.decode("utf-8", "replace").strip()[-500:]
                raise RuntimeError(f"the kernel exited before it was ready: {kernel.dead}"
                                   + (f": {tail}" if tail else ""))
            if time.monotonic() > deadline:
                _kill(self.client, kernel)
                raise RuntimeError(f"the kernel did not bind its sockets within "
                                   f"{self.start_timeout:g}s")
            time.sleep(0.02)     # in the background: few wake-ups (GIL) beat latency here
        try:
            _warm(kernel.info, max(deadline - time.monotonic(), 1.0))
        except Exception:
            _kill(self.client, kernel)
            raise
        return kernel

    def close(self) -> None:
        with self.lock:
            self.closed = True
            kernels, self.ready = self.ready, []
        self.wake.set()
        for kernel in kernels:
            _kill(self.client, kernel)
            shutil.rmtree(kernel.directory, ignore_errors=True)


# The notebook's connections (six sockets) take a started kernel's open files past 64,
# the size its fd table starts at. Growing the table of a threaded process waits for an
# RCU grace period (expand_files -> synchronize_rcu: 8-16 ms here) in the kernel's zmq I/O
# thread, just as the notebook's first request arrives. The warm-up grows it before:
# a table never shrinks. Run by exec in a namespace of its own: the user's sees nothing.
GROW_FD_TABLE = """\
import fcntl, os
fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
try:
    os.close(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 255))
except OSError:
    pass        # a lower RLIMIT_NOFILE: the table cannot grow that far anyway
finally:
    os.close(fd)
"""
WARM_REQUESTS = (("kernel_info_request", {}),
                 ("execute_request", {"code": f"exec({GROW_FD_TABLE!r}, {{}})",
                                      "silent": True, "store_history": False,
                                      "user_expressions": {}, "allow_stdin": False,
                                      "stop_on_error": False}))


def _warm(info: dict[str, Any], timeout: float) -> None:
    """Make a started kernel answer what a notebook's client asks first, on a
    connection of its own that then closes: a kernel_info request and a silent
    execute (invisible to the notebook: no history, no execution count, and iopub's
    messages go to this subscriber only)."""
    import zmq
    from jupyter_client.session import Session
    session = Session(key=info["key"], signature_scheme=info["signature_scheme"],
                      username="sandboxd-pool")
    context = zmq.Context.instance()
    shell, iopub = context.socket(zmq.DEALER), context.socket(zmq.SUB)
    try:
        for sock in (shell, iopub):
            sock.linger = 0
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        iopub.connect(f"ipc://{info['ip']}-{info['iopub_port']}")
        shell.connect(f"ipc://{info['ip']}-{info['shell_port']}")
        deadline = time.monotonic() + timeout
        for msg_type, content in WARM_REQUESTS:
            sent = session.send(shell, msg_type, content)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not shell.poll(int(left * 1000) + 1):
                    raise RuntimeError(f"the kernel did not answer a {msg_type} within "
                                       f"{timeout:g}s")
                _, frames = session.feed_identities(shell.recv_multipart())
                reply = session.deserialize(frames, content=False)
                if reply["parent_header"].get("msg_id") == sent["header"]["msg_id"]:
                    break
    finally:
        shell.close()
        iopub.close()


def _kill(client: Any, kernel: PooledKernel) -> None:
    from sandboxd.errors import SandboxError
    if kernel.container_id and kernel.dead is None:
        try:
            client.call("container.kill", {"id": kernel.container_id, "signal": "SIGKILL"})
        except SandboxError:
            pass


REAP_WAIT = 5.0      # seconds a shut-down pooled kernel gets to exit before the kill
FILL_END_WAIT = 2.0  # seconds close_all waits for a start under way to give up
_reaping: set[threading.Thread] = set()


def reap(client: Any, container_id: str, reader: threading.Thread | None,
         directories: tuple[str, ...], pool: KernelPool | None = None) -> None:
    """A pooled kernel was asked to shut down (the provisioner detached it): let it exit
    on its own in the background, kill it if it has not within REAP_WAIT, then remove
    its directories and release ``pool`` (the kernel's, whose refill may wait for it).
    :func:`close_all` (at exit) waits for these first."""
    def run() -> None:
        if reader is not None:
            reader.join(REAP_WAIT)
            if reader.is_alive() and container_id:
                from sandboxd.errors import SandboxError
                try:
                    client.call("container.kill", {"id": container_id, "signal": "SIGKILL"})
                except SandboxError:
                    pass
                reader.join(REAP_WAIT)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
        if pool is not None:
            pool.release()
        with _lock:
            _reaping.discard(threading.current_thread())
    thread = threading.Thread(target=run, daemon=True, name="sandboxd-kernel-reaper")
    with _lock:
        _reaping.add(thread)
    thread.start()


_pools: dict[tuple[str, str], KernelPool] = {}      # (daemon host, template) -> pool
_clients: dict[str, Any] = {}                        # daemon host -> the pools' session
_lock = threading.Lock()
_expiry: threading.Thread | None = None              # closes idle pools while there are any
_expiry_wake = threading.Event()                     # a pool was made, or all were closed


def connected(host: str) -> bool:
    """The pools already have a daemon session for ``host``."""
    return host in _clients


def pool_for(host: str, template: str, size: int, connect: Callable[[], Any],
             parent_dir: str, session: dict[str, Any], start_timeout: float) -> KernelPool:
    """This process's pool for a container configuration (made on first use; the least
    recently used of ``MAX_POOLS`` is closed to make room)."""
    global _expiry
    evicted: list[KernelPool] = []
    with _lock:
        pool = _pools.pop((host, template), None)
        if pool is None:
            if not _clients:
                atexit.register(close_all)
            if host not in _clients:
                _clients[host] = connect()
            pool = KernelPool(template, size, _clients[host], parent_dir, session,
                              start_timeout)
            while len(_pools) >= MAX_POOLS:
                evicted.append(_pools.pop(next(iter(_pools))))
        _pools[(host, template)] = pool         # the most recently used last
        pool.last_used = time.monotonic()
        pool.size = max(pool.size, size)
        if _expiry is None:
            _expiry = threading.Thread(target=_close_idle_pools, daemon=True,
                                       name="sandboxd-kernel-pool-expiry")
            _expiry.start()
        else:
            _expiry_wake.set()                  # it works its next deadline out again
    _close_in_background(evicted)
    return pool


def _close_idle_pools() -> None:
    """Close each pool once it has not been asked for in POOL_IDLE seconds; end when
    there are none left (pool_for starts another)."""
    global _expiry
    while True:
        with _lock:
            now = time.monotonic()
            idle = [key for key, pool in _pools.items() if now - pool.last_used >= POOL_IDLE]
            expired = [_pools.pop(key) for key in idle]
            if not _pools:
                _expiry = None
            wait = min((pool.last_used + POOL_IDLE - now for pool in _pools.values()),
                       default=0.0)
        for pool in expired:
            pool.close()
        if not wait:
            return
        _expiry_wake.wait(wait)
        _expiry_wake.clear()


def _close_in_background(pools: list[KernelPool]) -> None:
    """Close pools without blocking the caller (a launch, maybe on its event loop)."""
    if pools:
        threading.Thread(target=lambda: [pool.close() for pool in pools], daemon=True,
                         name="sandboxd-kernel-pool-close").start()


def close_all() -> None:
    """Kill every pooled kernel of this process and close the pools' sessions (after
    the kernels that were shut down have exited)."""
    with _lock:
        reaping = list(_reaping)
    for thread in reaping:
        thread.join(2 * REAP_WAIT + 1)
    with _lock:
        pools, clients = list(_pools.values()), list(_clients.values())
        _pools.clear()
        _clients.clear()
    _expiry_wake.set()                          # nothing left: the expiry thread ends
    for pool in pools:
        pool.close()
    for client in clients:
        client.close()
    for pool in pools:      # a start under way fails as its session ends: it cleans up
        filling = pool.filling
        if filling is not None:
            filling.join(FILL_END_WAIT)
