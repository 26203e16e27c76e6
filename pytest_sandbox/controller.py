"""The host side of a containerised test (pytest-xdist's controller/worker split, with
a container in place of the remote interpreter).

For each marked item :meth:`Controller.run_item` runs ONE container from the item's
image with its limits, whose command is ``<python> -m pytest_sandbox.worker``; the
project's code is bind-mounted read-only at the same paths, ``/tmp`` is a fresh tmpfs
(``--basetemp`` lives there). The worker runs the whole item (fixture setup and
teardown included) and streams its reports back as msgpack maps on its stdout; they are
rebuilt with ``pytest_report_from_serializable`` (plain data: nothing from the container
is ever unpickled) and handed to the item's ``pytest_runtest_logreport`` hook, so the
terminal, ``-x``, durations and junit-xml see them as local reports.

A container that ends without the reports of every phase becomes a failed report in
the first missing phase: "timed out after N s", "killed: out of memory (limit N MiB)"
or "worker crashed: ..." with the end of its stderr.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from _pytest.reports import TestReport

from sandboxd.errors import Cancelled, CommandNotFound, InvalidArgument, SetupFailed
from sandboxd.runner.interpreter import InterpreterView, ViewError
from sandboxd.runner.spec import DEFAULT_PATH, Mount

from . import WORKER_ENV

WORKER_MODULE = "pytest_sandbox.worker"
ZYGOTE_MODULE = "pytest_sandbox.zygote"
ZYGOTE_RESTARTS = 1                      # a zygote that dies is restarted this often
WORKER_ENTRY = f"{WORKER_MODULE}:main"     # the daemon's template runs it (host image)
HOST_IMAGES = ("host", "host:latest")
BASETEMP = "/tmp/pytest-sandbox"         # on the container's /tmp tmpfs
STDERR_KEPT = 64 * 1024                  # bytes of the worker's stderr kept for a crash
WATCHDOG_GRACE = 2.0                     # seconds after the daemon's own timeout kill
CHANNEL_LIMIT = 256 * 1024 * 1024        # the most report data one container may send
PHASES = ("setup", "call", "teardown")

# Host environment variables a test also sees inside (everything else is the image's
# and the marker's): locale, terminal, hash seed, warning filters, plugin loading.
PASSED_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "COLUMNS", "LINES",
              "NO_COLOR", "FORCE_COLOR", "PY_COLORS", "PYTHONHASHSEED", "PYTHONWARNINGS",
              "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONFAULTHANDLER", "PYTEST_PLUGINS",
              "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_THEME", "PYTEST_THEME_MODE",
              "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")

# Options the worker must not act on again: the controller writes junit-xml and the
# cache, distributes with xdist, and has already selected the item.
WORKER_OPTION_OVERRIDES: dict[str, Any] = {
    "sandbox": False, "basetemp": BASETEMP, "xmlpath": None, "reportlog": None,
    "report_log": None, "pastebin": None, "usepdb": False, "trace": False,
    "looponfail": False, "dist": "no", "numprocesses": None, "maxprocesses": None,
    "tx": [], "keyword": "", "markexpr": "", "deselect": [], "lf": False, "failedfirst":
    False, "newfirst": False, "stepwise": False, "stepwise_skip": False,
    "collectonly": False, "pyargs": False, "cacheclear": False, "cacheshow": False,
}

@dataclass(frozen=True)
class Settings:
    """What one item's container gets (marker over command line over ini)."""
    image: str = "host"
    memory: str | int | None = None
    cpus: float | str | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    pids: int | None = None
    ulimits: Mapping[str, Any] | Sequence[str] = ()
    network: str | None = None           # none; bridge with links; or a network fixture
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: Sequence[str] = ()
    timeout: float | None = None
    read_only: bool = False
    links: Mapping[str, str] | Sequence[str] = ()
    python: str = ""                     # the interpreter inside; default sys.executable
    fresh: bool = False                  # a cold container, not a fork of the zygote


MARKER_ARGS = tuple(f.name for f in fields(Settings))


class MarkerError(Exception):
    """A ``container`` marker with arguments it does not take."""


def defaults_from_config(config: pytest.Config) -> Settings:
    """``--sandbox-*`` options, then ``sandbox_*`` ini values, then Settings' own."""
    def pick(name: str) -> Any:
        value = config.getoption(f"sandbox_{name}")
        return value if value not in (None, "") else config.getini(f"sandbox_{name}")

    base = Settings()
    timeout = pick("timeout")
    return replace(base, image=pick("image") or base.image,
                   memory=pick("memory") or None, cpus=pick("cpus") or None,
                   timeout=float(timeout) if timeout not in (None, "") else None)


def settings_for(item: pytest.Item, defaults: Settings) -> Settings:
    """The closest ``container`` marker wins per argument (function over class over
    module); positional ``container("busybox")`` is the image."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers("container"))):    # farthest first
        if len(mark.args) > 1:
            raise MarkerError(f"container(...) takes at most one positional argument "
                              f"(the image), got {mark.args!r}")
        unknown = sorted(set(mark.kwargs) - set(MARKER_ARGS))
        if unknown:
            raise MarkerError(f"container(...) got unknown argument(s) "
                              f"{', '.join(unknown)}; it takes {', '.join(MARKER_ARGS)}")
        if mark.args:
            merged["image"] = mark.args[0]
        merged.update(mark.kwargs)
    return replace(defaults, **merged)


def wants_container(item: pytest.Item) -> bool:
    return item.config.getoption("sandbox") or \
        item.get_closest_marker("container") is not None


# ---------------------------------------------------------------- what the container sees

def interpreter_view(config: pytest.Config) -> InterpreterView:
    """This pytest process's Python environment, with the project (rootdir, invocation
    dir) and where this plugin and sandboxd are imported from (they may be on no
    ``sys.path`` entry: an editable install's finder, ``-p`` with a path hack)."""
    import sandboxd
    sources = [str(Path(m.__file__).resolve().parent.parent)
               for m in (sys.modules[__name__.rpartition(".")[0]], sandboxd)]
    return InterpreterView.current(str(config.rootpath), str(config.invocation_params.dir),
                                   sources)


def code_paths(config: pytest.Config, visible: Iterable[str]) -> tuple[list[str], list[str]]:
    """(directories to bind read-only at the same path, the PYTHONPATH inside) for a
    container whose image shows ``visible`` (notebooks' sessions)."""
    view = interpreter_view(config)
    try:
        binds = view.binds([*visible])
    except ViewError as exc:
        raise pytest.UsageError(f"pytest_sandbox: {exc}") from None
    return [m.destination for m in binds], view.pythonpath()


def worker_options(config: pytest.Config) -> dict[str, Any]:
    """The controller's option namespace as plain data, with the worker's overrides."""
    options = {}
    for name, value in vars(config.option).items():
        if name.startswith("_") or name == "file_or_dir":    # the worker parses its args
            continue
        plain = _plain(value)
        if plain is not _NOT_PLAIN:
            options[name] = plain
    options.update(WORKER_OPTION_OVERRIDES)
    options["rootdir"] = str(config.rootpath)
    if config.inipath is not None:
        options["inifilename"] = str(config.inipath)
    options["plugins"] = [*options.get("plugins", []), "no:cacheprovider"]
    return options


_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


def worker_args(item: pytest.Item) -> list[str]:
    """The item as a path argument: absolute, so the worker's cwd does not matter."""
    _, sep, rest = item.nodeid.partition("::")
    return [str(item.path) + (sep + rest if sep else "")]


# ---------------------------------------------------------------- the run

@dataclass
class Outcome:
    """What one container run produced, before it becomes reports."""
    reports: list[TestReport] = field(default_factory=list)
    collect_error: Any = None
    done: dict[str, Any] | None = None
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    error: str = ""
    bad_frame: str = ""
    container_id: str = ""
    wall: float = 0.0

    def side_event(self, event: str, data: Any, live_stderr: bool) -> None:
        """An attachment's event other than the channel's frames: the test container's
        stderr (kept, the end only; echoed with ``-s``) and its id."""
        if event == "stderr":
            self.stderr += data
            del self.stderr[:-STDERR_KEPT]
            if live_stderr:
                sys.stderr.write(data.decode("utf-8", "replace"))
        elif event == "created":
            self.container_id = str(data.get("id", ""))


@dataclass(frozen=True)
class Usage:
    nodeid: str
    maxrss_kib: int
    cpu_s: float
    wall_s: float
    exit: str


class Controller:
    """One per pytest session: one daemon connection (a daemon *session*: whatever it
    creates is removed when pytest's process ends, however it ends)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self._client: Any = None
        self._client_error: Exception | None = None
        self._lock = threading.Lock()
        self.view = interpreter_view(config)
        self._binds: dict[bool, list[Mount]] = {}     # host image or not -> binds
        self._view_error: tuple[str, str] | None = None    # (first nodeid, message)
        self._pythonpath = self.view.pythonpath()
        self._features: list[str] | None = None
        self._prestarted: dict[str, Any] = {}      # nodeid -> its container.run stream
        # Containers run as clones of the daemon's pre-imported worker, until the daemon
        # refuses (an older daemon, no template there): then fresh interpreters.
        self._template = not config.getoption("sandbox_no_template", False)
        # Items a fork of the session's zygote can run go there (see zygote.py).
        self._zygote_on = not config.getoption("sandbox_no_zygote", False)
        self._zygote: _Zygote | None = None
        self._zygote_deaths = 0
        self._zygote_ahead: dict[str, Any] | None = None     # the next item's request
        self._zygote_limits: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._passed_env_problems: bool | None = None
        self.usage: list[Usage] = []

    # -- the connection

    @property
    def client(self) -> Any:
        """The session's connected ``sandboxd.Client`` (connects on first use)."""
        with self._lock:
            if self._client is None:
                if self._client_error is not None:
                    raise self._client_error
                from sandboxd import Client
                host = self.config.getoption("sandbox_host") or \
                    self.config.getini("sandbox_host") or None
                try:
                    self._client = Client(host, session=True)
                except Exception as exc:          # every marked test reports it
                    self._client_error = exc
                    raise
            return self._client

    def close(self) -> None:
        for attachment in self._prestarted.values():    # the session stopped early
            attachment.cancel()
        self._prestarted.clear()
        if self._zygote is not None:
            self._zygote.stop()
            self._zygote = None
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- one item

    def run_item(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        from _pytest.runner import CallInfo
        from . import links as _links
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        outcome = None
        settings = None
        try:
            settings = settings_for(item, defaults_from_config(self.config))
            wanted = _links.parse_links(settings.links)
            on_host = _links.host_fixtures(item, settings.network, wanted)
            if wanted or (settings.network and _links.is_user_network(settings.network)):
                self._require("networks", "links and user networks")
            # Link targets start on the host (they start service containers); an error
            # there is this item's setup error, with the fixture's own traceback.
            values: dict[str, Any] = {}
            call = CallInfo.from_call(
                lambda: values.update(_links.setup_on_host(item, on_host)) if on_host
                else None, when="setup", reraise=(KeyboardInterrupt,))
            if call.excinfo is not None:
                reports = [TestReport.from_item_and_call(item, call)]
            else:
                plan = _links.plan(self.client, settings.network, wanted, values)
                outcome = self._run(item, settings, plan, nextitem)
                reports = self._reports(item, settings, outcome)
        except (MarkerError, pytest.UsageError, TypeError, ValueError) as exc:
            settings, outcome = None, None
            reports = self._problem_reports(item, [], f"{exc}")
        except CommandNotFound as exc:                # no interpreter at that path
            python = (settings.python if settings else "") or self.view.executable
            image = settings.image if settings else "host"
            reports = self._problem_reports(
                item, [], f"cannot run the test in a container: image {image!r} has no "
                          f"interpreter at {python} ({exc.message}); "
                          + ("give the marker's python= an interpreter inside the image"
                             if image not in HOST_IMAGES else "is it visible on the host?"))
            settings, outcome = None, None
        except Exception as exc:                     # the daemon refused or is gone
            settings, outcome = None, None
            reports = self._problem_reports(
                item, [], f"cannot run the test in a container: {type(exc).__name__}: "
                          f"{getattr(exc, 'message', None) or exc}")
        reports = self._host_teardown(item, nextitem, reports)
        if not any(r.when == "teardown" for r in reports):
            reports.append(_report(item, "teardown", "passed", None, []))
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        if outcome is not None and outcome.done is not None:
            self.usage.append(Usage(item.nodeid, int(outcome.done.get("maxrss_kib", 0)),
                                    float(outcome.done.get("cpu_s", 0.0)), outcome.wall,
                                    _describe_exit(outcome)))
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _require(self, feature: str, what: str) -> None:
        if self._features is None:
            self._features = list(self.client.version().get("features", []))
        if feature not in self._features:
            raise pytest.UsageError(
                f"{what} need the {feature} feature, which this sandboxd does not have "
                f"(its features: {', '.join(self._features)}); update the daemon")

    def _view_binds(self, item: pytest.Item, host_image: bool) -> list[Mount]:
        """The session's binds; a path that cannot be shown is explained in full for
        the first item that needs it, and named in one line for the others."""
        if self._view_error is not None:
            first, message = self._view_error
            raise pytest.UsageError(message if first == item.nodeid else
                                    f"pytest_sandbox cannot show this Python environment "
                                    f"in a container (the reason is at {first})")
        if host_image not in self._binds:
            from sandboxd.runner.interpreter import view_mounts
            try:
                self._binds[host_image] = view_mounts(self.view, host_image)
            except ViewError as exc:
                message = (f"pytest_sandbox cannot show this Python environment in a "
                           f"container: {exc.path}: {exc.why}; run pytest from a "
                           f"project directory, with --rootdir naming one")
                self._view_error = (item.nodeid, message)
                raise pytest.UsageError(message) from None
        return self._binds[host_image]

    def _container_options(self, item: pytest.Item, settings: Settings,
                           plan: Any) -> dict[str, Any]:
        host_image = settings.image in HOST_IMAGES
        binds = self._view_binds(item, host_image)
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.update({"PYTHONPATH": os.pathsep.join(self._pythonpath),
                    "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root", WORKER_ENV: "1"})
        if host_image:      # the interpreter's bin dir first, as an activated venv has it
            env["PATH"] = ":".join(dict.fromkeys(
                [os.path.dirname(settings.python or self.view.executable),
                 *DEFAULT_PATH.split(":")]))
        env.update({str(k): str(v) for k, v in dict(settings.env).items()})
        # /tmp first: the binds below may lie under it (a venv or a project in /tmp).
        volumes: list[Any] = [Mount("/tmp", "tmpfs", options=("mode=1777",))]
        volumes += binds
        volumes += list(settings.volumes)
        options: dict[str, Any] = dict(
            env=env, workdir=str(self.config.invocation_params.dir), volumes=volumes,
            memory=settings.memory, cpus=settings.cpus, cpu_quota=settings.cpu_quota,
            cpu_period=settings.cpu_period, pids_limit=settings.pids,
            ulimits=settings.ulimits, network_mode=plan.network,
            read_only=settings.read_only, timeout=settings.timeout, links=plan.links,
            labels={"pytest_sandbox.nodeid": item.nodeid}, init=True)
        return options

    def _start(self, item: pytest.Item, settings: Settings, plan: Any) -> Any:
        """Ask the daemon for the item's container; its worker starts, imports pytest
        and waits for the run's options on stdin."""
        from sandboxd.flags import build_config
        options = self._container_options(item, settings, plan)
        python = settings.python or self.view.executable
        entry = WORKER_ENTRY if self._templated(settings, python, options["env"]) else ""
        cfg = build_config(settings.image, [python, "-m", WORKER_MODULE],
                           auto_remove=True, open_stdin=True, entry=entry, **options)
        attachment = self.client.stream("container.run", {
            "config": cfg.to_dict(), "stdin": True, "remove": True, "detach": False})
        attachment.templated = bool(entry)
        return attachment

    def _templated(self, settings: Settings, python: str, env: Mapping[str, str]) -> bool:
        """Whether the item's worker can be a clone of the daemon's template: the host
        image, this interpreter, and no setting that acts only at interpreter start."""
        from sandboxd.runner.template import env_problems
        return self._template and settings.image in HOST_IMAGES and \
            python == self.view.executable and not env_problems(dict(env))

    # -- the session's zygote

    def _zygote_can_run(self, settings: Settings, plan: Any) -> bool:
        """Whether a fork of the zygote gives this item what it asked for: the host
        image and this interpreter, no network, links or volumes, no setting that acts
        only at interpreter start, and limits within the zygote's (the session's)."""
        from sandboxd.runner.spec import parse_size
        from sandboxd.runner.template import env_problems
        if self._passed_env_problems is None:       # the same for the whole session
            self._passed_env_problems = bool(env_problems(
                {n: "" for n in PASSED_ENV if n in os.environ}))
        if not self._zygote_on or settings.fresh or settings.image not in HOST_IMAGES or \
                settings.python not in ("", self.view.executable) or settings.links or \
                settings.volumes or (settings.network or "none") != "none" or \
                plan.linked or (settings.env and env_problems(dict(settings.env))) or \
                settings.cpu_quota or settings.cpu_period or self._passed_env_problems:
            return False
        session = defaults_from_config(self.config)
        if session.memory is not None and (settings.memory is None or parse_size(
                settings.memory) > parse_size(session.memory)):
            return False
        if session.cpus is not None and (settings.cpus is None or
                                         float(settings.cpus) > float(session.cpus)):
            return False
        return True

    def _start_zygote(self, item: pytest.Item) -> _Zygote:
        from sandboxd.flags import build_config
        from .links import Plan
        session = defaults_from_config(self.config)
        options = self._container_options(
            item, replace(session, timeout=None), Plan(network="none", links=[], linked={}))
        options.update(read_only=True, init=False,
                       labels={"pytest_sandbox.zygote": str(os.getpid())})
        # The zygote's root is a non-root host uid: what it shows must be readable by
        # anyone (a project in a 0700 directory is not).
        for mount in options["volumes"]:
            if getattr(mount, "type", "") == "bind" and mount.source:
                mode = os.stat(mount.source).st_mode
                need = 0o005 if stat.S_ISDIR(mode) else 0o004
                if mode & need != need:
                    raise InvalidArgument(
                        f"{mount.source} is not readable by other users (mode "
                        f"{stat.S_IMODE(mode):o}), and the zygote runs as one")
        cfg = build_config("host", [self.view.executable, "-m", ZYGOTE_MODULE], auto_remove=True,
                           open_stdin=True, zygote=True, **options)
        attachment = self.client.stream("container.run", {
            "config": cfg.to_dict(), "stdin": True, "remove": True, "detach": False})
        args = [str(a) for a in self.config.args] or [str(self.config.rootpath)]
        attachment.send(msgpack.packb({"args": args,
                                       "options": worker_options(self.config)}))
        return _Zygote(attachment)

    def _zygote_request(self, item: pytest.Item, settings: Settings) -> dict[str, Any]:
        """What the zygote gets for ``item``: the one sent ahead for it, if any (the
        zygote then runs the child it made ahead)."""
        ahead, self._zygote_ahead = self._zygote_ahead, None
        if ahead is not None and ahead["nodeid"] == item.nodeid:
            return ahead
        import secrets
        key = (settings.memory, settings.cpus, settings.pids, repr(settings.ulimits))
        if key not in self._zygote_limits:          # parsed once per distinct setting
            from sandboxd.flags import build_config
            from sandboxd.runner.spec import to_dict
            host = build_config("host", ["true"], memory=settings.memory,
                                cpus=settings.cpus, pids_limit=settings.pids,
                                ulimits=settings.ulimits).host
            self._zygote_limits[key] = (to_dict(host.limits()),
                                        [to_dict(u) for u in host.ulimits])
        limits, ulimits = self._zygote_limits[key]
        return {"nodeid": item.nodeid, "hostname": secrets.token_hex(6),
                "limits": limits, "ulimits": ulimits,
                "env": {str(k): str(v) for k, v in dict(settings.env).items()}}

    def _zygote_next(self, nextitem: pytest.Item | None) -> dict[str, Any] | None:
        """The request for ``nextitem`` when a fork of the zygote will run it: sent with
        the current one, so that the zygote makes its container while this test runs."""
        if nextitem is None or not wants_container(nextitem) or \
                getattr(nextitem, "runs_own_container", False):
            return None
        from .links import Plan
        try:
            settings = settings_for(nextitem, defaults_from_config(self.config))
            if not self._zygote_can_run(settings, Plan(network="none", links=[],
                                                       linked={})):
                return None
            return self._zygote_request(nextitem, settings)
        except Exception:           # the item's own turn reports the problem
            return None

    def _run_in_zygote(self, item: pytest.Item, settings: Settings,
                       nextitem: pytest.Item | None) -> Outcome | None:
        """The item in a fork of the zygote; None when the daemon will not run a zygote
        (the item then gets a cold container, as does every later one)."""
        request = self._zygote_request(item, settings)
        ahead = self._zygote_next(nextitem)
        self._zygote_ahead = ahead
        if ahead is not None:
            request = {**request, "next": ahead}
        if self._zygote is None:
            try:
                self._zygote = self._start_zygote(item)
            except (InvalidArgument, SetupFailed) as exc:
                self._zygote_on = False
                _zygote_warning(self.config, exc)
                return None
        zygote = self._zygote
        outcome = Outcome()
        began = time.monotonic()
        watchdog = None
        if settings.timeout:
            watchdog = threading.Timer(settings.timeout, zygote.kill)
            watchdog.daemon = True
            watchdog.start()
        try:
            ended = zygote.run(self, item, request, outcome)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        outcome.wall = time.monotonic() - began
        if ended is not None:
            outcome.exit_code = int(ended.get("exit_code", 0))
            outcome.oom_killed = bool(ended.get("oom_killed"))
            outcome.error = str(ended.get("error") or "")
            return outcome
        # The zygote is gone: killed at this item's timeout, or it died.
        self._zygote = None
        self._zygote_ahead = None
        final = zygote.final()
        if watchdog is not None and watchdog.finished.is_set():
            outcome.timed_out = True
            return outcome
        if zygote.refused is not None and not zygote.started:
            self._zygote_on = False             # the daemon would not run one
            _zygote_warning(self.config, zygote.refused)
            return None
        self._zygote_deaths += 1
        outcome.exit_code = int(final.get("exit_code", 0)) if final else None
        again = self._zygote_deaths <= ZYGOTE_RESTARTS
        if not again:
            self._zygote_on = False
        outcome.error = (f"the session's zygote died (exit code {outcome.exit_code}); "
                         + ("it is restarted for the next test" if again else
                            "it died before too: the rest of the session runs in cold "
                            "containers"))
        return outcome

    def _prestart(self, nextitem: pytest.Item | None) -> None:
        """Start the next item's container now, while this item runs: its interpreter
        and pytest import (most of a containerised test's cost) overlap this test.

        Still one fresh container per item, and nothing of the project runs in it until
        the item's own turn sends the options. Only for items with no host-side set-up
        (links, network fixtures: those run at the item's turn). Such a container gets
        no daemon timeout (the daemon would count the wait): the item's timeout is kept
        here, from its turn, by cancelling the run (the daemon then kills it)."""
        if nextitem is None or not wants_container(nextitem) or \
                nextitem.nodeid in self._prestarted:
            return
        try:
            settings = settings_for(nextitem, defaults_from_config(self.config))
            if settings.links:
                return
            from .links import Plan, is_user_network
            if is_user_network(settings.network or "none"):
                return
            plan = Plan(network=settings.network or "none", links=[], linked={})
            if self._zygote_can_run(settings, plan):
                return                  # a fork of the zygote: nothing to start ahead
            self._prestarted[nextitem.nodeid] = self._start(
                nextitem, replace(settings, timeout=None), plan)
        except Exception:       # the item's own turn tries again and reports the error
            return

    def _run(self, item: pytest.Item, settings: Settings, plan: Any,
             nextitem: pytest.Item | None = None) -> Outcome:
        attachment = self._prestarted.pop(item.nodeid, None)
        if attachment is None and self._zygote_can_run(settings, plan):
            outcome = self._run_in_zygote(item, settings, nextitem)
            if outcome is not None:
                self._prestart(nextitem)
                return outcome
        request = msgpack.packb({"args": worker_args(item),
                                 "options": worker_options(self.config),
                                 "linked": plan.linked})
        grace = 0.0                     # started ahead: this watchdog is the timeout
        templated = self._template
        outcome = Outcome()
        try:
            if attachment is None:
                attachment = self._start(item, settings, plan)
                grace = WATCHDOG_GRACE  # the daemon kills at the timeout; this bounds it
            templated = getattr(attachment, "templated", False)
            return self._attached(item, settings, request, attachment, grace, nextitem,
                                  outcome)
        except (InvalidArgument, SetupFailed) as exc:
            text = str(getattr(exc, "message", None) or exc)
            if not templated or ("entry" not in text and "template" not in text) or \
                    outcome.reports or outcome.stderr or outcome.done is not None:
                raise
        # The template was refused (an older daemon, or a client and daemon that allow
        # different entries) or failed to start, before the worker did anything: fresh
        # interpreters from now on, this item included.
        self._template = False
        for other in self._prestarted.values():
            other.cancel()
        self._prestarted.clear()
        return self._attached(item, settings, request, self._start(item, settings, plan),
                              WATCHDOG_GRACE, nextitem, Outcome())

    def _attached(self, item: pytest.Item, settings: Settings, request: bytes,
                  attachment: Any, grace: float, nextitem: pytest.Item | None,
                  outcome: Outcome) -> Outcome:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=CHANNEL_LIMIT)
        live_stderr = self.config.getoption("capture") == "no"
        began = time.monotonic()
        watchdog = None
        if settings.timeout:
            watchdog = threading.Timer(settings.timeout + grace, attachment.cancel)
            watchdog.daemon = True
            watchdog.start()
        try:
            with attachment:
                attachment.send(request)
                attachment.close_stdin()
                self._prestart(nextitem)
                for event, data in attachment:
                    if event == "stdout":
                        self._feed(item, unpacker, data, outcome)
                    else:
                        outcome.side_event(event, data, live_stderr)
                try:
                    final = attachment.result()
                except Cancelled:
                    if watchdog is None or not watchdog.finished.is_set():
                        raise
                    final = {}          # cancelled at the timeout: reported as such
        finally:
            if watchdog is not None:
                watchdog.cancel()
        outcome.wall = time.monotonic() - began
        outcome.exit_code = int(final.get("exit_code", 0))
        outcome.oom_killed = bool(final.get("oom_killed"))
        outcome.timed_out = bool(final.get("timed_out")) or (
            watchdog is not None and watchdog.finished.is_set() and outcome.done is None)
        outcome.error = str(final.get("error") or "")
        return outcome

    def _feed(self, item: pytest.Item, unpacker: Any, data: bytes, outcome: Outcome) -> None:
        if outcome.bad_frame:
            return
        try:
            unpacker.feed(data)
            for message in unpacker:
                self._message(item, message, outcome)
        except Exception as exc:        # malformed data from inside: the test failed
            outcome.bad_frame = f"{type(exc).__name__}: {exc}"

    def _message(self, item: pytest.Item, message: Any, outcome: Outcome) -> None:
        if not isinstance(message, dict):
            raise ValueError(f"expected a map, got {type(message).__name__}")
        kind = message.get("kind")
        hook = self.config.hook
        if kind == "report":
            report = hook.pytest_report_from_serializable(config=self.config,
                                                          data=message["data"])
            if not isinstance(report, TestReport) or report.when not in PHASES:
                raise ValueError("a report that is not a test report")
            report.location = tuple(report.location)
            if report.skipped and isinstance(report.longrepr, list):
                report.longrepr = tuple(report.longrepr)
            if report.nodeid == item.nodeid:
                outcome.reports.append(report)
        elif kind == "collect":
            outcome.collect_error = hook.pytest_report_from_serializable(
                config=self.config, data=message["data"])
        elif kind == "warning":
            _rewarn(self.config, message)
        elif kind == "done":
            outcome.done = {"maxrss_kib": int(message.get("maxrss_kib", 0)),
                            "cpu_s": float(message.get("cpu_s", 0.0)),
                            "exitstatus": int(message.get("exitstatus", 0))}

    # -- reports

    def _reports(self, item: pytest.Item, settings: Settings,
                 outcome: Outcome) -> list[TestReport]:
        reports = outcome.reports
        if _complete(reports):
            return reports
        if outcome.collect_error is not None and not reports:
            return self._problem_reports(item, [], "", longrepr=outcome.collect_error.longrepr,
                                         sections=outcome.collect_error.sections)
        if outcome.timed_out:
            problem = f"timed out after {settings.timeout:g} s"
        elif outcome.oom_killed:
            problem = f"killed: out of memory (limit {_mib(settings.memory)})"
        elif outcome.bad_frame:
            problem = f"the worker sent malformed data: {outcome.bad_frame}"
        elif outcome.done is not None and not reports:
            problem = (f"the worker ran no test (pytest exit status "
                       f"{outcome.done['exitstatus']}): is {item.nodeid} collected "
                       f"the same way inside the container?")
        else:
            problem = f"worker crashed: {_describe_exit(outcome)}"
        if outcome.error:
            problem += f" ({outcome.error})"
        tail = bytes(outcome.stderr).decode("utf-8", "replace").strip()
        return self._problem_reports(item, reports, problem, stderr=tail)

    def _problem_reports(self, item: pytest.Item, got: list[TestReport], problem: str,
                         stderr: str = "", longrepr: Any = None,
                         sections: Iterable[tuple[str, str]] = ()) -> list[TestReport]:
        """``got`` plus a failed report in the first missing phase (and a passed
        teardown after it), so every item has the usual setup/call/teardown."""
        reports = list(got)
        when = _next_phase(reports)
        if longrepr is None:
            longrepr = ProblemRepr(item, problem, stderr)
        reports.append(_report(item, when, "failed", longrepr, list(sections)))
        if when != "teardown":
            reports.append(_report(item, "teardown", "passed", None, []))
        return reports

    def _host_teardown(self, item: pytest.Item, nextitem: pytest.Item | None,
                       reports: list[TestReport]) -> list[TestReport]:
        """Fixtures that earlier *local* tests set up on the host are torn down where a
        local run of this item would (pytest's SetupState expects it); an error there
        is this item's teardown error, as it would be locally."""
        from _pytest.runner import CallInfo
        setupstate = getattr(item.session, "_setupstate", None)
        if setupstate is None:
            return reports
        call = CallInfo.from_call(lambda: setupstate.teardown_exact(nextitem),
                                  when="teardown", reraise=(KeyboardInterrupt,))
        if call.excinfo is None:
            return reports
        host = TestReport.from_item_and_call(item, call)
        kept = [r for r in reports if r.when != "teardown"]
        container_td = [r for r in reports if r.when == "teardown"]
        if container_td and container_td[0].failed:
            return reports
        return kept + [host]

    def summary(self, terminalreporter: Any) -> None:
        if not self.usage:
            return
        tr = terminalreporter
        tr.write_sep("=", "sandbox resources (peak RSS, CPU time, wall time per test)")
        for u in self.usage:
            tr.write_line(f"{u.maxrss_kib / 1024:8.1f} MiB {u.cpu_s:7.2f}s cpu "
                          f"{u.wall_s:7.2f}s wall  {u.exit:<10} {u.nodeid}")


class _Zygote:
    """The session's zygote container (``python -m pytest_sandbox.zygote``): one
    ``container.run`` whose stdin takes an item at a time and whose stdout carries the
    forked tests' frames. An item ends with its test's ``done`` frame (the zygote
    handles the exit while the next test runs), or with an ``ended`` frame naming it
    when the test exited without one."""

    def __init__(self, attachment: Any):
        self.attachment = attachment
        self.events = iter(attachment)
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=CHANNEL_LIMIT)
        self.started = False            # it sent "ready": its collection is done
        self.refused: Exception | None = None

    def run(self, controller: Controller, item: pytest.Item, request: dict[str, Any],
            outcome: Outcome) -> dict[str, Any] | None:
        """Send the item, feed its frames to ``outcome``; how it ended (its ``ended``
        frame, or exit code 0 after its ``done`` frame), or None when the zygote's
        stream ended first."""
        live_stderr = controller.config.getoption("capture") == "no"
        try:
            self.attachment.send(msgpack.packb(request))
        except Exception:
            return None
        for event, data in self.events:
            if event == "stdout":
                if outcome.bad_frame:
                    continue
                try:
                    self.unpacker.feed(data)
                    for message in self.unpacker:
                        kind = message.get("kind") if isinstance(message, dict) else None
                        if kind == "ready":
                            self.started = True
                        elif kind == "ended":
                            self.started = True
                            # Another item's is not news: it ended with its "done".
                            if message.get("nodeid") == item.nodeid:
                                return message
                        else:
                            controller._message(item, message, outcome)
                            if outcome.done is not None:
                                return {"exit_code": 0, "oom_killed": False}
                except Exception as exc:        # malformed data: this test failed
                    outcome.bad_frame = f"{type(exc).__name__}: {exc}"
                    self.kill()
            else:
                outcome.side_event(event, data, live_stderr)
        return None

    def final(self) -> dict[str, Any]:
        try:
            result = self.attachment.result()
        except (InvalidArgument, SetupFailed) as exc:
            self.refused = exc
            return {}
        except Exception:
            return {}
        return result if isinstance(result, dict) else {}

    def kill(self) -> None:
        self.attachment.cancel()

    def stop(self) -> None:
        try:
            self.attachment.close_stdin()      # the zygote ends at EOF
        except Exception:
            pass
        self.attachment.cancel()


def _zygote_warning(config: pytest.Config, exc: Exception) -> None:
    import warnings
    warnings.warn(pytest.PytestWarning(
        f"pytest_sandbox: the daemon runs no zygote ({getattr(exc, 'message', exc)}): "
        f"every test gets a cold container"))


class ProblemRepr:
    """The longrepr of a report the container could not deliver: a message (also the
    short-summary line) and the end of the worker's stderr."""

    def __init__(self, item: pytest.Item, message: str, stderr: str):
        from _pytest._code.code import ReprFileLocation
        path, lineno, _ = item.location
        self.reprcrash = ReprFileLocation(path, (lineno or 0) + 1, message)
        self.message = message
        self.stderr = stderr

    def toterminal(self, tw: Any) -> None:
        tw.line(self.message, red=True, bold=True)
        if self.stderr:
            tw.sep("-", "worker stderr (last lines)")
            for line in self.stderr.splitlines()[-60:]:
                tw.line(line)

    def __str__(self) -> str:
        text = self.message
        if self.stderr:
            text += "\n--- worker stderr (last lines) ---\n" + \
                "\n".join(self.stderr.splitlines()[-60:])
        return text


def _report(item: pytest.Item, when: str, outcome: str, longrepr: Any,
            sections: list[tuple[str, str]]) -> TestReport:
    return TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, outcome,
                      longrepr, when, sections=sections, duration=0.0, start=time.time(),
                      stop=time.time(), user_properties=list(item.user_properties))


def _complete(reports: list[TestReport]) -> bool:
    return _next_phase(reports) == "" and any(r.when == "teardown" for r in reports)


def _next_phase(reports: list[TestReport]) -> str:
    """The phase a local run would report next ('' when teardown is in)."""
    seen = {r.when: r for r in reports}
    if "teardown" in seen:
        return ""
    if "setup" not in seen:
        return "setup"
    if seen["setup"].passed and "call" not in seen:
        return "call"
    return "teardown"


def _describe_exit(outcome: Outcome) -> str:
    code = outcome.exit_code
    if outcome.timed_out:
        return "timed out"
    if outcome.oom_killed:
        return "OOM killed"
    if code is not None and code > 128:
        try:
            return f"killed by signal {signal.Signals(code - 128).name} (exit code {code})"
        except ValueError:
            pass
    return f"exit code {code}"


def _mib(memory: str | int | None) -> str:
    if memory is None:
        return "none"
    from sandboxd.runner.spec import parse_size
    return f"{parse_size(memory) / (1 << 20):g} MiB"


# Warning categories a worker may name; anything else comes back as a UserWarning.
_CATEGORIES = {c.__name__: c for c in (
    UserWarning, DeprecationWarning, PendingDeprecationWarning, RuntimeWarning,
    SyntaxWarning, FutureWarning, ImportWarning, UnicodeWarning, BytesWarning,
    ResourceWarning, EncodingWarning, pytest.PytestWarning,
    pytest.PytestDeprecationWarning, pytest.PytestUnraisableExceptionWarning,
    pytest.PytestUnhandledThreadExceptionWarning, pytest.PytestUnknownMarkWarning,
    pytest.PytestCollectionWarning)}


def _rewarn(config: pytest.Config, message: Mapping[str, Any]) -> None:
    import warnings
    category = _CATEGORIES.get(str(message.get("category")), UserWarning)
    text = str(message.get("message", ""))
    recorded = warnings.WarningMessage(category(text), category,
                                       str(message.get("filename", "")),
                                       int(message.get("lineno", 0)))
    config.hook.pytest_warning_recorded.call_historic(kwargs={
        "warning_message": recorded, "when": "runtest",
        "nodeid": str(message.get("nodeid", "")), "location": None})
