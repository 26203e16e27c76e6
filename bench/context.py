"""What every case gets: settings, the shared rootfs, unique ids, and the long-lived
things (peer set-up, our runner, our daemon) made once on first use and torn down by
:meth:`Bench.close`, which also reports anything it had to clean up."""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

from sandboxd.runner.spec import DEFAULT_CAPABILITIES
from sandboxd.testing import busybox_rootfs, busybox_tar

from . import host

MEMORY = 64 * 2**20       # the limits every limited runtime gets
PIDS = 64


class NotAvailable(Exception):
    """This row cannot be measured here; the message says why (printed in the table)."""


@contextmanager
def closed_on_failure(thing: Any, what: str) -> Iterator[None]:
    """Set up ``thing`` (a daemon, a registry) inside this block: when it fails,
    ``thing.close()`` and the failure is a NotAvailable (``what``: the error) for the
    rows that need it, not a crash of the bench."""
    try:
        yield
    except NotAvailable:
        thing.close()
        raise
    except Exception as exc:
        thing.close()
        raise NotAvailable(f"{what}: {type(exc).__name__}: {exc}") from None


class Runtime(Protocol):
    """What the bench sets up once and tears down at the end (every
    :class:`bench.peers.Peer` is one)."""
    name: str

    def missing(self) -> str | None: ...

    def setup(self, bench: Bench) -> None: ...

    def teardown(self, bench: Bench) -> list[str]: ...


R = TypeVar("R", bound=Runtime)


@dataclass(frozen=True)
class Settings:
    runs: int = 200           # sequential runs per row
    warmup: int = 5           # runs before those, not counted
    concurrency: int = 50     # containers started at once
    rounds: int = 5           # how often the concurrent start is repeated
    process_runs: int = 50    # runs of whole CLI processes (each a Python start-up)
    chunks: int = 4           # each row's runs come in this many turns, rows alternating


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tag = f"sandboxd-bench-{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix=self.tag + "-"))
        self.rootfs = busybox_rootfs()
        self.capabilities = DEFAULT_CAPABILITIES
        self._ids = itertools.count(1)
        self._setups: dict[str, NotAvailable | None] = {}
        self._shared: dict[str, Any] = {}
        self._stack = ExitStack()
        self.leftovers: list[str] = []

    @cached_property
    def rootfs_tar(self) -> Path:
        return busybox_tar()

    def new_id(self, runtime: str) -> str:
        return f"{self.tag}-{runtime}-{next(self._ids)}"

    def peer(self, peer: R) -> R:
        """``peer``, set up on first use; raises NotAvailable when it is missing or its
        set-up (including the limits check) failed, every time it is asked for."""
        if peer.name not in self._setups:
            reason = peer.missing()
            if reason is None:
                self._stack.callback(self._teardown, peer)
                try:
                    peer.setup(self)
                except NotAvailable as exc:
                    reason = str(exc)
            self._setups[peer.name] = NotAvailable(reason) if reason else None
        if self._setups[peer.name] is not None:
            raise self._setups[peer.name]
        return peer

    def shared(self, name: str, start: Callable[[Bench], Any]) -> Any:
        """One long-lived object per name (our runner, our daemon), made and started by
        ``start`` on first use and closed (its ``close()``) by :meth:`close`.
        A start that failed fails the same way for every later case."""
        if name not in self._shared:
            try:
                obj = start(self)
            except NotAvailable as exc:
                obj = exc
            else:
                self._stack.callback(obj.close)
            self._shared[name] = obj
        obj = self._shared[name]
        if isinstance(obj, NotAvailable):
            raise obj
        return obj

    def _teardown(self, peer: Runtime) -> None:
        self.leftovers += peer.teardown(self)

    def close(self) -> list[str]:
        """Stop and remove everything; return what was left behind by a run and had to be
        cleaned up here, then anything that still could not be removed."""
        try:
            self._stack.close()
        except Exception as exc:     # the kernel-side cleanup below must still run
            self.leftovers.append(f"cleanup error: {type(exc).__name__}: {exc}")
        left, stuck = host.remove_cgroups(self.tag)
        mounts = host.tagged_mounts(self.tag, str(self.tmp))
        if not mounts:        # never rm -rf through a mount that is still there
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.leftovers + left + [f"NOT REMOVED: {s}" for s in stuck + mounts]
