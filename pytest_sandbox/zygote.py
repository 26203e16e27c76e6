"""The session's zygote: ``python -m pytest_sandbox.zygote`` in a zygote container.

It runs in the project's interpreter inside a container of its own (the read-only view,
no network, the session's limits, a user namespace of its own: see
``sandboxd/runner/zygote.py``). It builds pytest's config from the controller's options
as a worker does, imports the conftests and collects the session's test modules ONCE,
then for each item the controller names forks a child into a fresh container
(``sandboxd/runner/testfork.py``: its own namespaces, /tmp, /proc and cgroup) that runs
that one item and streams its reports, exactly as :mod:`pytest_sandbox.worker` does.

stdin: msgpack maps, ``{"options", "args"}`` first, then per item ``{"nodeid",
"hostname", "limits", "ulimits", "env"}``. stdout (the channel): the worker's frames,
plus ``{"kind": "ready", "items"}`` once collected and, after each item,
``{"kind": "ended", "exit_code", "oom_killed"}``.

What a test forked from here shares with the zygote and its siblings: the memory pages
of the interpreter and the imported modules (copy-on-write), nothing else. Module state
is the zygote's after collection: what one test changes at run time is gone for the
next, but what a module does at import time happened once, in the zygote.
"""
from __future__ import annotations

import gc

gc.disable()                       # as in the worker: nothing to collect while loading

import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import msgpack  # noqa: E402
import pytest  # noqa: E402

from sandboxd.runner.spec import Ulimit, from_dict  # noqa: E402
from sandboxd.runner.testfork import TestContainer, end_test, fork_test  # noqa: E402

from .worker import Channel, WorkerPlugin, _usage  # noqa: E402


def _requests(fd: int) -> Iterator[dict[str, Any]]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            return
        unpacker.feed(data)
        for message in unpacker:
            if isinstance(message, dict):
                yield message


def _run_child(item: Any, request: dict[str, Any], channel: Channel) -> None:
    """In the test's fresh container: run the one item as the worker would."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.update({str(k): str(v) for k, v in dict(request.get("env") or {}).items()})
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


def main() -> int:
    # A private copy of stdin for the requests: pytest's capture points fd 0 at
    # /dev/null while the session is set up.
    requests_fd = os.dup(0)
    requests = _requests(requests_fd)
    first = next(requests)
    channel_fd = os.dup(1)             # the channel; fd 1 is stderr for everything else
    os.dup2(2, 1)
    channel = Channel(os.fdopen(channel_fd, "wb", buffering=0))
    config = pytest.Config.fromdictargs(first["options"], list(first["args"]))
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
    for request in requests:
        nodeid = str(request.get("nodeid"))
        item = items.get(nodeid)
        if item is None:
            error = next((r for r in failed if nodeid.startswith(r.nodeid)), None)
            if error is not None:
                channel.send({"kind": "collect", "data": config.hook.
                              pytest_report_to_serializable(config=config, report=error)})
            channel.send({"kind": "ended", "exit_code": 0, "oom_killed": False,
                          "missing": True})
            continue
        test = TestContainer(
            hostname=str(request.get("hostname") or "test"),
            limits=dict(request.get("limits") or {}),
            ulimits=tuple(from_dict(Ulimit, u, "ulimits") for u in request.get("ulimits")
                          or ()))
        pid, cgroup = fork_test(test)
        if pid == 0:
            try:
                os.close(requests_fd)           # the next items are not the test's business
                _run_child(item, request, channel)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        ended = end_test(cgroup) if cgroup else {}
        code = os.waitstatus_to_exitcode(status)
        channel.send({"kind": "ended", "exit_code": 128 - code if code < 0 else code,
                      "oom_killed": bool(ended.get("oom_killed"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
