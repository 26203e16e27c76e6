"""A container's lifecycle as data: its states, and for each operation the states it
acts on, the state it leaves behind, and what it says otherwise. Every container
operation asks :func:`check` before it changes anything, so "cannot pause an exited
container" is the ``pause`` line of :data:`RULES`, not an ``if`` in the service::

    created ──start──► running ──exit/kill/stop──► exited ──start──► running
                          │ ▲                         │
                    pause │ │ unpause                 └──remove──► (gone)
                          ▼ │
                        paused

``restarting``: a restart policy waits out its delay (restart.py); a user's start, stop,
kill or rm cancels the wait (a daemon that died meanwhile marks it exited). ``removing`` and ``dead`` are Docker's names for a removal under way
and one that failed; no operation but ``remove`` acts on them. ``stop`` (and a forced
``remove``) act on the process the daemon holds, whatever the record says: a start in
flight has one before its record says running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Conflict

STATES = ("created", "running", "paused", "restarting", "exited", "removing", "dead")
ACTIVE = ("running", "paused")        # a process exists: the container "is running"


@dataclass(frozen=True)
class Rule:
    """``allowed``: the states the operation acts on; ``then``: the state it leaves
    (None: unchanged); ``noop``: states where it is done already (no error, no change);
    ``refusal``: the ``Conflict`` message otherwise, or per state in ``refusals``.
    Messages are formatted with the record's ``name``, ``id``, ``short`` (12 hex digits)
    and ``status``."""
    allowed: tuple[str, ...]
    then: str | None
    refusal: str
    noop: tuple[str, ...] = ()
    refusals: tuple[tuple[str, str], ...] = ()


_NOT_RUNNING = "Container {short} is not running"

RULES: dict[str, Rule] = {
    "start": Rule(("created", "exited", "restarting"), "running", "container {name} is {status}",
                  noop=("running",),
                  refusals=(("paused", "container {name} is paused: unpause it first"),)),
    "exit": Rule(("running", "paused", "restarting"), "exited", _NOT_RUNNING),
    "kill": Rule(ACTIVE, None, _NOT_RUNNING),
    "pause": Rule(("running",), "paused", "Container {short} is {status}, not running"),
    "unpause": Rule(("paused",), "running", "Container {short} is {status}, not paused"),
    "exec": Rule(("running",), None, _NOT_RUNNING, refusals=(
        ("paused", "Container {short} is paused, unpause the container before exec"),)),
    "top": Rule(ACTIVE, None, _NOT_RUNNING),
    "attach": Rule(ACTIVE, None, "You cannot attach to a stopped container, start it first"),
    "connect": Rule(ACTIVE, None,
                    "container {name} is not running: network connect works on running "
                    "containers (give --network to run/create)"),
    "remove": Rule(("created", "exited", "restarting", "removing", "dead"), None,
                   "You cannot remove a running container {id}. Stop the container before "
                   "attempting removal or force remove"),
}


def status(record: Any, live: bool = True) -> str:
    """The record's state, with ``live``: whether the daemon holds its process. A record
    that says running without one has in truth exited (its exit is being settled)."""
    state = record.state.status
    return "exited" if state in ACTIVE and not live else state


def check(op: str, record: Any, live: bool = True) -> bool:
    """May ``op`` act on ``record`` now? True: go on; False: done already (a no-op);
    else ``Conflict`` with the rule's message, nothing changed."""
    rule = RULES[op]
    state = status(record, live)
    if state in rule.allowed:
        return True
    if state in rule.noop:
        return False
    raise refusal(op, record, state)


def refusal(op: str, record: Any, state: str | None = None) -> Conflict:
    """The ``Conflict`` that ``op`` answers in ``state`` (the record's own by default):
    for a caller that knows better than the record (a process still held)."""
    rule = RULES[op]
    state = state or record.state.status
    message = dict(rule.refusals).get(state, rule.refusal)
    return Conflict(message.format(name=record.name, id=record.id, short=record.id[:12],
                                   status=state))


def after(op: str) -> str:
    """The state ``op`` leaves a container in."""
    then = RULES[op].then
    if then is None:
        raise ValueError(f"{op} does not change a container's state")
    return then
