"""The session's zygote: ``python -m pytest_sandbox.zygote`` in a zygote container.

It runs in the project's interpreter inside a container of its own (the read-only view,
no network, the session's limits, a user namespace of its own: see
``sandboxd/runner/zygote.py``). It builds pytest's config from the controller's options
as a worker does, imports the conftests and collects the session's test modules ONCE,
then for each item the controller names forks a child into a fresh container
(``sandboxd/runner/testfork.py``: its own namespaces, /tmp, /proc and cgroup) that runs
that one item and streams its reports, exactly as :mod:`pytest_sandbox.worker` does.

stdin: msgpack maps, ``{"options", "args"}`` first, then per item ``{"nodeid",
"hostname", "limits", "ulimits", "env"}``, optionally with ``"next"``: the request the
controller will send next. The next item's child is then forked and set up (cgroup,
namespaces, mounts, filter) while the current test runs, and parked; it runs only when
that same request arrives (any other request discards it). stdout (the channel): the
worker's frames, ``{"kind": "ready", "items"}`` once collected, and ``{"kind":
"ended", "nodeid", "exit_code", "oom_killed"[, "error"]}`` for a test that exited
without its ``done`` frame (a test that sent ``done`` is complete: its exit is handled
here, while the next one runs). One released test at a time writes to the channel: the
next request waits until the current test has written its last frame or exited.

What a test forked from here shares with the zygote and its siblings: the memory pages
of the interpreter and the imported modules (copy-on-write), nothing else. Module state
is the zygote's after collection: what one test changes at run time is gone for the
next, but what a module does at import time happened once, in the zygote.
"""
from __future__ import annotations

import gc

gc.disable()                       # as in the worker: nothing to collect while loading

import os  # noqa: E402
import selectors  # noqa: E402
import sys  # noqa: E402
from collections import deque  # noqa: E402
from typing import Any, Callable  # noqa: E402

import msgpack  # noqa: E402
import pytest  # noqa: E402

from sandboxd.runner.spec import Ulimit, from_dict  # noqa: E402
from sandboxd.runner.testfork import TestChild, TestContainer, fork_test  # noqa: E402

from .worker import Channel, WorkerPlugin, _usage, inner_config  # noqa: E402


def _prepare_child(item: Any, request: dict[str, Any]) -> None:
    """In the test's fresh container, before it parks: what needs no test code."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.update({str(k): str(v) for k, v in dict(request.get("env") or {}).items()})
    _own_capture_files(item.config)
    gc.freeze()                     # what the zygote made since its freeze: never scanned


def _run_child(item: Any, channel: Channel) -> None:
    """In the test's fresh container, released: run the one item as the worker would."""
    gc.enable()
    status = 0
    try:
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=None)
    except BaseException:                       # reported as a crash by the controller
        import traceback
        traceback.print_exc()
        status = 1
    maxrss, cpu = _usage()
    channel.send({"kind": "done", "exitstatus": status, "maxrss_kib": maxrss,
                  "cpu_s": cpu})


def _own_capture_files(config: Any) -> None:
    """pytest's capture files (fd capture: temporary files behind fds 1 and 2) were
    made in the zygote, and every fork shares them: what a test killed in the middle
    of a phase wrote would be in the next one's. This test gets files of its own, in its
    own /tmp, in the state pytest keeps between items (suspended)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None or getattr(capman, "_global_capturing", None) is None:
        return
    capman._global_capturing.stop_capturing()       # closes this child's copies only
    capman._global_capturing = None
    capman.start_global_capturing()
    capman.suspend_global_capture(in_=True)


def _lazy_caches() -> dict[str, tuple[Callable[[], bool], Callable[[], Any]]]:
    """Caches a library fills in a process at its first use, by name: (is it filled,
    fill it). Each forked test would fill them again (a plain run does it once), so a
    test tells the zygote which ones it filled and the zygote fills them once for the
    tests forked after. What they hold does not depend on which test asked first.

    hypothesis: the Unicode category map and the UTF-8 codec's intervals (``text()``;
    1-3 s a test on attrs' suite: their files in ``.hypothesis`` are written 0600, so a
    zygote cannot read a plain run's), and the constants of every local module (read
    from the source of each at the first example)."""
    caches: dict[str, tuple[Callable[[], bool], Callable[[], Any]]] = {}
    charmap = sys.modules.get("hypothesis.internal.charmap")
    if callable(getattr(charmap, "charmap", None)) and hasattr(charmap, "_charmap"):
        caches["hypothesis.charmap"] = (lambda: charmap._charmap is not None,
                                        charmap.charmap)
    codec = getattr(charmap, "intervals_from_codec", None)
    if callable(getattr(codec, "cache_info", None)):
        caches["hypothesis.utf-8"] = (lambda: codec.cache_info().currsize > 0,
                                      lambda: codec("utf-8"))
    providers = sys.modules.get("hypothesis.internal.conjecture.providers")
    if callable(getattr(providers, "_get_local_constants", None)) and \
            hasattr(providers, "_sys_modules_len"):
        caches["hypothesis.constants"] = (lambda: providers._sys_modules_len is not None,
                                          providers._get_local_constants)
    return caches


def _filled(before: set[str]) -> str:
    """In a test's child, at its end: the lazy caches it filled (empty in the zygote)."""
    return ",".join(name for name, (filled, _) in _lazy_caches().items()
                    if name not in before and filled())


class _Tests:
    """Serves the controller's requests: a fork per item, the next one made ahead."""

    def __init__(self, config: Any, items: dict[str, Any], failed: list[Any],
                 channel: Channel, requests_fd: int, unpacker: Any):
        self.config = config
        self.items = items
        self.failed = failed
        self.channel = channel
        self.requests_fd = requests_fd
        self.selector = selectors.DefaultSelector()
        self.selector.register(requests_fd, selectors.EVENT_READ, ("requests", None))
        self.unpacker = unpacker
        self.pending: deque[dict[str, Any]] = deque(
            m for m in unpacker if isinstance(m, dict))
        self.active: TestChild | None = None      # released; may still write frames
        self.parked: tuple[dict[str, Any], TestChild] | None = None
        self.ahead: dict[str, Any] | None = None  # to make once the released test runs
        self.children: dict[int, tuple[TestChild, str]] = {}    # pid -> (child, nodeid)
        self.filled = {name for name, (filled, _) in _lazy_caches().items() if filled()}
        self.to_fill: set[str] = set()      # lazy caches a test filled: fill them here

    def serve(self) -> int:
        self._serve_pending()               # what came with the options
        while True:
            exited = []
            for key, _ in self.selector.select():
                what, child = key.data
                if what == "requests":
                    data = os.read(self.requests_fd, 1 << 16)
                    if not data:
                        return 0            # the session ended: the container goes
                    self.unpacker.feed(data)
                    self.pending.extend(m for m in self.unpacker if isinstance(m, dict))
                elif what == "control":
                    if not child.on_control():
                        self.selector.unregister(child.control)
                    if child.started and child is self.active:
                        self._make_ahead()
                    if child.done and child is self.active:
                        self.active = None
                        self.to_fill.update(n for n in child.note.split(",") if n)
                elif what == "exit":
                    exited.append(child)
            # The next test first; exits are handled while it runs.
            self._serve_pending()
            for child in exited:
                self._reap(child)
            self._serve_pending()

    def _serve_pending(self) -> None:
        while self.active is None and self.pending:
            self._request(self.pending.popleft())

    def _request(self, request: dict[str, Any]) -> None:
        self._make_ahead()                  # (the one before never said it started)
        nodeid = str(request.get("nodeid"))
        item = self.items.get(nodeid)
        if item is None:
            error = next((r for r in self.failed if nodeid.startswith(r.nodeid)), None)
            if error is not None:
                self.channel.send({"kind": "collect", "data": self.config.hook.
                                   pytest_report_to_serializable(config=self.config,
                                                                 report=error)})
            self.channel.send({"kind": "ended", "nodeid": nodeid, "exit_code": 0,
                               "oom_killed": False, "missing": True})
            return
        child = None
        if self.parked is not None:
            ahead, parked = self.parked
            self.parked = None
            if _same(ahead, request):
                child = parked
            elif parked.exit_code is None:
                parked.discard()
        if child is None:
            child = self._fork(item, request)
        ahead = request.get("next")
        if isinstance(ahead, dict) and str(ahead.get("nodeid")) in self.items:
            self.ahead = ahead
        if child.exit_code is not None:         # it could not become a container
            self._ended(child, nodeid)
            self._make_ahead()
        else:
            # The next container is made once this test runs: on a busy machine a fork
            # now would take the CPU the released test is waiting for.
            child.release()
            self.active = child

    def _make_ahead(self) -> None:
        """Fork the next item's child (it sets up and parks while the current test runs),
        after filling the lazy caches a test asked for."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return
        self._fill()
        if self.parked is not None and self.parked[1].exit_code is None:
            self.parked[1].discard()
        self.parked = (ahead, self._fork(self.items[str(ahead["nodeid"])], ahead))

    def _fill(self) -> None:
        caches = _lazy_caches()
        for name in self.to_fill - self.filled:
            if name in caches:
                try:
                    caches[name][1]()
                except Exception:       # its tests fill it then, as before
                    pass
            self.filled.add(name)
        self.to_fill.clear()

    def _fork(self, item: Any, request: dict[str, Any]) -> TestChild:
        test = TestContainer(
            hostname=str(request.get("hostname") or "test"),
            limits=dict(request.get("limits") or {}),
            ulimits=tuple(from_dict(Ulimit, u, "ulimits") for u in request.get("ulimits")
                          or ()))
        # Nothing of the zygote's own may reach a test: the requests, this loop, and
        # the pidfds and control sockets of its siblings.
        private = [self.requests_fd, self.selector.fileno()]
        for other, _ in self.children.values():
            private += [other.pidfd, other.control.fileno()]
        child = fork_test(test, close_in_child=private,
                          prepare=lambda: _prepare_child(item, request))
        if child.pid == 0:
            try:
                _run_child(item, self.channel)
                child.finished(_filled(self.filled))
            finally:
                os._exit(0)
        self.children[child.pid] = (child, str(request.get("nodeid")))
        self.selector.register(child.pidfd, selectors.EVENT_READ, ("exit", child))
        self.selector.register(child.control, selectors.EVENT_READ, ("control", child))
        return child

    def _reap(self, child: TestChild) -> None:
        self.selector.unregister(child.pidfd)
        if child.control.fileno() in self.selector.get_map():
            child.drain()
            self.selector.unregister(child.control)
        _, nodeid = self.children.pop(child.pid)
        child.reap()
        if child is self.active:
            self.active = None
            if not child.done:
                self._ended(child, nodeid)
            self._make_ahead()

    def _ended(self, child: TestChild, nodeid: str) -> None:
        message: dict[str, Any] = {"kind": "ended", "nodeid": nodeid,
                                   "exit_code": child.exit_code,
                                   "oom_killed": child.oom_killed}
        if child.error:
            message["error"] = child.error
        self.channel.send(message)


def _same(ahead: dict[str, Any], request: dict[str, Any]) -> bool:
    """Whether the request made ahead is this one (the controller sends it again)."""
    return {k: v for k, v in ahead.items() if k != "next"} == \
        {k: v for k, v in request.items() if k != "next"}


def _first_request(fd: int, unpacker: Any) -> dict[str, Any]:
    """The session's options (what came after them stays in ``unpacker``)."""
    while True:
        for message in unpacker:
            if isinstance(message, dict):
                return message
        data = os.read(fd, 1 << 16)
        if not data:
            raise SystemExit("the controller sent no options")
        unpacker.feed(data)


def main() -> int:
    # A private copy of stdin for the requests: pytest's capture points fd 0 at
    # /dev/null while the session is set up.
    requests_fd = os.dup(0)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
    first = _first_request(requests_fd, unpacker)
    channel_fd = os.dup(1)             # the channel; fd 1 is stderr for everything else
    os.dup2(2, 1)
    channel = Channel(os.fdopen(channel_fd, "wb", buffering=0))
    config = inner_config(first["options"], first["args"])
    config.pluginmanager.register(WorkerPlugin(config, channel, {}, None), "sandbox-worker")
    config._do_configure()
    session = pytest.Session.from_config(config)
    config.hook.pytest_sessionstart(session=session)
    failed: list[Any] = []

    class Collected:
        def pytest_collectreport(self, report: Any) -> None:
            if report.failed:
                failed.append(report)

    config.pluginmanager.register(Collected(), "sandbox-zygote-collect")
    try:
        session.perform_collect()
    except pytest.UsageError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
    except session.Failed:
        pass                            # collection errors: answered per item below
    items = {item.nodeid: item for item in session.items}
    gc.freeze()                         # the children's collector never scans these
    channel.send({"kind": "ready", "items": len(items)})
    return _Tests(config, items, failed, channel, requests_fd, unpacker).serve()


if __name__ == "__main__":
    sys.exit(main())
