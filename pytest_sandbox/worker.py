"""The inside of a containerised test: ``python -m pytest_sandbox.worker``.

The controller (:mod:`pytest_sandbox.controller`) writes one msgpack map to the worker's
stdin: ``{"args": [test path], "options": {option dest: value}}`` — pytest's option
namespace as the controller parsed it, minus what must not run twice (junit-xml, xdist,
the cache). The worker rebuilds the config from it (``Config.fromdictargs``, as
pytest-xdist's workers do), runs the one test, and sends back a stream of msgpack maps
on its *original* stdout:

- ``{"kind": "report", "data": <pytest_report_to_serializable of a TestReport>}``
- ``{"kind": "collect", "data": <the same for a failed CollectReport>}``
- ``{"kind": "warning", "message", "category", "filename", "lineno", "nodeid"}``
- ``{"kind": "done", "exitstatus", "maxrss_kib", "cpu_s"}``

That stdout is reserved for the channel: before pytest starts, the worker keeps a
duplicate of fd 1 for itself and points fd 1 at stderr, so whatever the test or pytest
prints (``-s``, a C extension writing to fd 1, faulthandler) lands on the container's
stderr and cannot corrupt a frame. The worker's own terminal output is discarded: the
controller's terminal shows the results.
"""
from __future__ import annotations

import gc

# Start-up allocates hundreds of thousands of long-lived objects (pytest, its plugins,
# the config): collecting them while they are made, and again in pytest's
# end-of-session gc.collect() passes, is pure cost in a one-test process. The
# collector is off until the config is built, then everything so far is frozen
# (never scanned again) and the test runs with the collector on as usual.
gc.disable()

import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from typing import Any, BinaryIO  # noqa: E402

import msgpack  # noqa: E402
import pytest  # noqa: E402


class Channel:
    """Frames to the controller: a msgpack stream on a private copy of stdout."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._packer = msgpack.Packer(default=str)    # odd report attributes: as text

    def send(self, message: dict[str, Any]) -> None:
        self._stream.write(self._packer.pack(message))
        self._stream.flush()


class WorkerPlugin:
    """Forwards what the controller needs to rebuild the run; registered in the worker's
    pytest session only."""

    def __init__(self, config: Any, channel: Channel, linked: dict[str, dict[str, Any]],
                 target: str | None):
        self.config = config
        self.channel = channel
        self.linked = linked
        self.target: tuple[str, list[str]] | None = None
        if target is None:              # a zygote: it collects the whole session
            return
        # The one item to run, as (its file, the names below the module): collecting
        # anything else of the module would only be thrown away.
        path, _, rest = target.partition("::")
        names = rest.split("::") if rest else []
        if names:
            names[-1] = names[-1].partition("[")[0]      # a parametrized case's function
        self.target = (os.path.abspath(path), names)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(self, collector: Any, name: str, obj: object) -> Any:
        """Skip the module's (or class's) other members: ``[]`` means "no items"."""
        if self.target is None:
            return None
        path, names = self.target
        if str(collector.path) != path:
            return None
        depth, node = 0, collector
        while node is not None and not isinstance(node, pytest.Module):
            depth, node = depth + 1, node.parent
        if node is None or depth >= len(names):
            return None
        return None if name == names[depth] else []

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        """Fixtures named in the marker's ``links`` ran on the host (they started the
        services): here each is a constant, the :class:`LinkedService` the controller
        sent, and whatever only they needed drops out of the item's closure."""
        if not self.linked:
            return
        from _pytest.fixtures import FixtureDef
        from .links import LinkedService
        for item in items:
            info = getattr(item, "_fixtureinfo", None)
            if info is None:
                continue
            for name, fields in self.linked.items():
                defs = info.name2fixturedefs.get(name)
                scope = defs[-1].scope if defs else "function"
                value = LinkedService(**{**fields, "ports": tuple(fields.get("ports", ()))})
                info.name2fixturedefs[name] = (FixtureDef(
                    config, None, name, _constant(value), scope, None, _ispytest=True),)
            info.prune_dependency_tree()
            item._initrequest()     # its request copied the old definitions

    def _serialise(self, report: Any) -> dict[str, Any]:
        return self.config.hook.pytest_report_to_serializable(config=self.config,
                                                              report=report)

    @pytest.hookimpl(trylast=True)      # after the terminal plugin made its reporter
    def pytest_configure(self, config: Any) -> None:
        # The controller prints results; the worker's terminal would only be noise on
        # stderr (which is shown when the worker crashes, and live with ``-s``).
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and hasattr(reporter, "_tw"):
            from _pytest.config import create_terminal_writer
            reporter._tw = create_terminal_writer(config, open(os.devnull, "w"))

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.channel.send({"kind": "report", "data": self._serialise(report)})

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed and self.target is not None:    # a zygote sends them per item
            self.channel.send({"kind": "collect", "data": self._serialise(report)})

    def pytest_warning_recorded(self, warning_message: Any, when: str, nodeid: str,
                                location: Any) -> None:
        self.channel.send({"kind": "warning", "message": str(warning_message.message),
                           "category": warning_message.category.__name__,
                           "filename": str(warning_message.filename),
                           "lineno": int(warning_message.lineno or 0), "nodeid": nodeid})


def _constant(value: Any) -> Any:
    return lambda: value


def _usage() -> tuple[int, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return max(own.ru_maxrss, kids.ru_maxrss), cpu



# In a worker or a zygote the plugin is the program, imported before pytest starts, so
# pytest cannot rewrite its asserts and warns about it in every run (it has no assert
# that needs rewriting). The user's own -W filters stay in force.
ALREADY_IMPORTED = tuple(f"ignore:Module already imported so cannot be rewritten; {name}"
                         ":pytest.PytestAssertRewriteWarning"
                         for name in ("pytest_sandbox", "sandboxd"))


def inner_config(options: dict, args: list) -> pytest.Config:
    """The session's config inside a container, from the controller's options and args."""
    options = {**options,
               "pythonwarnings": [*(options.get("pythonwarnings") or []), *ALREADY_IMPORTED]}
    return pytest.Config.fromdictargs(options, list(args))


def main() -> int:
    request = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)                 # the test sees an empty stdin, as under pytest
    os.close(null)
    channel_fd = os.dup(1)           # os.dup: not inherited by the test's subprocesses
    os.dup2(2, 1)
    channel = Channel(os.fdopen(channel_fd, "wb", buffering=0))

    try:
        config = inner_config(request["options"], request["args"])
        config.pluginmanager.register(
            WorkerPlugin(config, channel, dict(request.get("linked") or {}),
                         str(request["args"][0])), "sandbox-worker")
        gc.freeze()
        gc.enable()
        status = int(config.hook.pytest_cmdline_main(config=config))
    except pytest.UsageError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        status = int(pytest.ExitCode.USAGE_ERROR)
    maxrss, cpu = _usage()
    channel.send({"kind": "done", "exitstatus": status, "maxrss_kib": maxrss,
                  "cpu_s": cpu})
    return status


if __name__ == "__main__":
    sys.exit(main())
