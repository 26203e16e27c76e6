"""The daemon's event bus: what happened to containers, images, networks and volumes, in
Docker's event shape, for ``sbx events``, the ``system.events`` operation and the Docker
API's ``/events``.

The services emit (one ``self.events.container(record, "start")`` line at each point
Docker emits one); the bus keeps a ring of the last :data:`RING` events (``--since``
replays from it) and hands each new one to its subscribers. A subscriber has a bounded
queue: one that falls :data:`QUEUE` events behind is dropped (its stream ends with a
clear error), so a slow reader never blocks the daemon nor grows its memory.

Emitting is cheap and thread-safe: the image service's work runs in worker threads, and
an event emitted there reaches each subscriber through its own loop.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Mapping, Sequence

from .errors import InvalidArgument, LimitExceeded
from .model import ContainerRecord, pairs

RING = 1024          # recent events kept for --since
QUEUE = 1024         # events a subscriber may fall behind before it is dropped

# Docker's types; sandboxd emits the first four (the others match nothing).
TYPES = ("container", "image", "network", "volume", "daemon", "plugin", "service", "node",
         "secret", "config")
FILTER_KEYS = ("type", "event", "container", "image", "network", "volume", "label",
               "scope", "daemon")
# Docker matches these actions by prefix: "exec_start: sh -c ..." is an exec_start.
_PREFIX_ACTIONS = ("exec_create", "exec_start", "health_status")


class Subscription:
    """One reader's view of the bus: :meth:`next` waits for the next event."""

    def __init__(self, bus: EventBus, limit: int):
        self._bus = bus
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._items: collections.deque[dict] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.dropped = False

    def push(self, event: dict) -> None:
        """From any thread; never blocks."""
        if threading.get_ident() == self._thread:
            self._put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:             # its loop is closed: the reader is gone
            self._bus.unsubscribe(self)

    def _put(self, event: dict) -> None:
        if self.dropped:
            return
        if len(self._items) >= self._limit:
            self.dropped = True
            self._bus.unsubscribe(self)
        else:
            self._items.append(event)
        self._ready.set()

    async def next(self, timeout: float | None = None) -> dict | None:
        """The next event; None when ``timeout`` seconds pass without one.
        ``LimitExceeded`` once the reader fell too far behind and was dropped."""
        while not self._items:
            if self.dropped:
                raise LimitExceeded(f"events: the reader fell more than {self._limit} "
                                    f"events behind and was dropped")
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):    # not wait_for: see pools._refill
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._items.popleft()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Emitting keeps what happened, not Docker's dict: the dict is built only for a
    reader (a subscriber at once, a ``--since`` replay from the ring). Most runs have no
    reader, and building the four container events' dicts (attributes from the labels)
    was ~4 % of the daemon's CPU per cold run."""

    def __init__(self, ring: int = RING, queue: int = QUEUE):
        self._ring: collections.deque[_Pending] = collections.deque(maxlen=ring)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._queue = queue

    @property
    def listeners(self) -> int:
        return len(self._subscribers)

    # -- emitting
    def emit(self, type_: str, action: str, actor: str,
             attributes: Mapping[str, str] | None = None) -> None:
        self._add((type_, action, actor, attributes, None, time.time_ns()))

    def _add(self, pending: _Pending) -> None:
        with self._lock:
            self._ring.append(pending)
            if not self._subscribers:
                return
            subscribers = list(self._subscribers)
        event = _event(pending)
        for sub in subscribers:
            sub.push(event)

    def container(self, record: ContainerRecord, action: str, **extra: Any) -> None:
        """A container event: its labels, image and name as attributes (as Docker)."""
        self._add(("container", action, record.id, extra, record, time.time_ns()))

    def exited(self, record: ContainerRecord) -> None:
        """A container's process ended: ``oom`` first when the kernel killed it, then
        ``die`` with its exit code."""
        if record.state.oom_killed:
            self.container(record, "oom")
        self.container(record, "die", exitCode=record.state.exit_code)

    def mounts(self, record: ContainerRecord, action: str) -> None:
        """``mount``/``unmount`` of each named or anonymous volume the container has."""
        for m in record.config.host.mounts:
            if m.type == "volume":
                attrs = {"container": record.id, "driver": "local"}
                if action == "mount":
                    attrs.update(destination=m.destination, propagation="",
                                 **{"read/write": str(not m.readonly).lower()})
                self.emit("volume", action, m.source, attrs)

    def image(self, action: str, actor: str, name: str = "") -> None:
        self.emit("image", action, actor, {"name": name or actor})

    def network(self, action: str, network: Any, container: str = "") -> None:
        """``network``: a ``sandboxd.network.Network`` (its id, name and driver)."""
        self.emit("network", action, network.id,
                  {"name": network.name, "type": network.driver,
                   **({"container": container} if container else {})})

    def volume(self, action: str, name: str, driver: str = "local") -> None:
        self.emit("volume", action, name, {"driver": driver})

    # -- reading
    def subscribe(self, since: float | None = None, until: float | None = None
                  ) -> tuple[list[dict], Subscription]:
        """The kept events between ``since`` and ``until`` (Unix seconds, both
        inclusive; replayed when either is given, as dockerd does), and a subscription
        to those that come after them (nothing is lost or repeated in between)."""
        sub = Subscription(self, self._queue)
        with self._lock:
            past = list(self._ring) if since is not None or until is not None else []
            self._subscribers.add(sub)
        low = int(since * 1e9) if since is not None else 0
        high = int(until * 1e9) if until is not None else None
        return [_event(p) for p in past if p[5] >= low and (high is None or p[5] <= high)], sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)


# An event as emitted: (type, action, actor id, attributes, the container's record for a
# container event (its labels, image and name join the attributes), time in ns).
_Pending = tuple[str, str, str, "Mapping[str, Any] | None", "ContainerRecord | None", int]


def _event(pending: _Pending) -> dict:
    """Docker's shape of an event (with the fields of its old format for containers and
    images)."""
    type_, action, actor, attributes, record, now = pending
    if record is not None:
        attributes = {**pairs(record.config.labels), "image": record.config.image,
                      "name": record.name, **(attributes or {})}
    attrs = {k: str(v) for k, v in (attributes or {}).items()}
    event: dict[str, Any] = {}
    if type_ in ("container", "image"):
        event = {"status": action, "id": actor,
                 **({"from": attrs["image"]} if "image" in attrs else {})}
    event.update({"Type": type_, "Action": action,
                  "Actor": {"ID": actor, "Attributes": attrs},
                  "scope": "local", "time": now // 1_000_000_000, "timeNano": now})
    return event


def check_filters(filters: Mapping[str, Sequence[str]]) -> None:
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"events: unknown filter key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(FILTER_KEYS)})")
    for value in filters.get("type", ()):
        if value not in TYPES:
            raise InvalidArgument(f"events: filters.type: {value!r} is not one of "
                                  f"{', '.join(TYPES)}")


def _strip_tag(ref: str) -> str:
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


def matches(event: dict, filters: Mapping[str, Sequence[str]]) -> bool:
    """Docker's event filters: values of one key OR-ed, keys AND-ed; ``container``,
    ``network`` and ``volume`` match the actor's id or name exactly or as a prefix,
    ``image`` an image's id or name with or without its tag, ``label`` each ``k`` or
    ``k=v`` against the attributes."""
    actor = event["Actor"]
    attrs = actor["Attributes"]

    def fuzzy(key: str) -> bool:
        values = filters.get(key)
        if not values:
            return True
        names = [actor["ID"], attrs.get("name", "")]
        return any(n and (n == v or n.startswith(v)) for v in values for n in names)

    def exact(key: str, candidates: Sequence[str]) -> bool:
        values = filters.get(key)
        return not values or any(v in candidates for v in values)

    actions = filters.get("event") or ()
    if actions:
        action = event["Action"]
        if not any(action == a or (a in _PREFIX_ACTIONS and action.startswith(a + ":"))
                   for a in actions):
            return False
    image = attrs.get("name" if event["Type"] == "image" else "image", "")
    for label in filters.get("label", ()):
        key, sep, value = label.partition("=")
        if key not in attrs or (sep and attrs[key] != value):
            return False
    return (exact("type", (event["Type"],)) and exact("scope", ("local",))
            and fuzzy("container") and fuzzy("network") and fuzzy("volume")
            and fuzzy("daemon")
            and exact("image", (actor["ID"], image, _strip_tag(actor["ID"]),
                                _strip_tag(image))))


# The bus of a service that no composition root wired (a unit test's): it keeps nothing
# and has no subscribers.
NOWHERE = EventBus(ring=0)
