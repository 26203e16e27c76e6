"""The wire protocol between clients and sandboxd: framing, safe decoding, message shapes.

A frame is a 4-byte big-endian unsigned length followed by exactly that many bytes holding
one msgpack map. Both sides refuse a frame whose header announces more than the frame limit
(``MAX_FRAME``, 16 MiB unless lowered) before reading or allocating its body.

Decoding is strict because the daemon runs as root and reads from anyone who can open its
socket: strings must be UTF-8, map keys strings, ext types (timestamps included) are
refused, containers may nest at most ``MAX_DEPTH`` levels and one frame may hold at most
``MAX_ITEMS`` array elements plus map entries (a 16 MiB frame of one-byte empty maps would
otherwise become a gigabyte of Python objects). msgpack itself cannot carry integers wider
than 64 bits; encoding one fails here with a ``ProtocolError``. Every problem is a
:class:`ProtocolError` (an ``InvalidArgument``) naming what was wrong.

Message shapes (``docs/protocol.md`` has the full description)::

    client -> daemon   {"id": n, "op": str, "params": map}      a request (hello is id 0)
                       {"id": n, "stdin": bytes}                stream frames for request n
                       {"id": n, "stdin_eof": true}
                       {"id": n, "resize": [rows, cols]}
                       {"id": n, "cancel": true}
    daemon -> client   {"id": n, "event": str, "data": any}     zero or more, then one of
                       {"id": n, "ok": any}
                       {"id": n, "error": {"code", "message", "details"}}
                       {"id": null, "error": ...}               the connection is refused/closed

This module imports only msgpack and the standard library's struct/os so the CLI starts fast.
"""
from __future__ import annotations

import os
import struct

import msgpack

from .errors import InvalidArgument, LimitExceeded, SandboxError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_FRAME = 16 * 1024 * 1024       # bytes of msgpack in one frame (the header excluded)
MAX_DEPTH = 64                     # nested arrays/maps, the top-level map counting as 1
MAX_ITEMS = 1 << 20                # array elements + map entries in one frame
MAX_ID = (1 << 63) - 1
MAX_OP_LEN = 128

DEFAULT_SOCKET = "/run/sandboxd/sandboxd.sock"
DEFAULT_ROOT = "/var/lib/sandboxd"

HEADER = struct.Struct(">I")

# What a client may send for a request id besides the request itself.
STREAM_KINDS = ("stdin", "stdin_eof", "resize", "cancel")


class ProtocolError(InvalidArgument):
    """A frame or message that breaks the protocol. ``request_id`` is set when the bad
    message still named a usable request id, so the daemon can answer that request
    instead of closing the connection."""

    def __init__(self, message: str, request_id: int | None = None):
        super().__init__(message, {"request_id": request_id} if request_id is not None else None)
        self.request_id = request_id


# ---------------------------------------------------------------- addresses

def parse_host(host: str) -> str:
    """``unix:///path`` or a plain absolute path -> the socket path."""
    text = str(host).strip()
    if text.startswith("unix://"):
        text = text[len("unix://"):]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise InvalidArgument(f"host {host!r}: scheme {scheme!r} is not supported yet; "
                              f"use unix:///path/to/sandboxd.sock")
    if not text.startswith("/"):
        raise InvalidArgument(f"host {host!r}: expected unix:///absolute/path or an absolute "
                              f"socket path")
    return os.path.normpath(text)


def resolve_host(host: str | None = None) -> str:
    """Explicit argument > ``$SANDBOXD_HOST`` > the default socket."""
    return parse_host(host or os.environ.get("SANDBOXD_HOST") or DEFAULT_SOCKET)


# ---------------------------------------------------------------- framing

def encode(message: dict, max_frame: int = MAX_FRAME) -> bytes:
    """One message -> header + body. Values must be msgpack-native (None, bool, int within
    64 bits, float, str, bytes, list/tuple, dict with str keys)."""
    try:
        body = msgpack.packb(message, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        # OverflowError: an int beyond 64 bits; TypeError: a type msgpack does not know.
        raise ProtocolError(f"cannot encode message: {type(exc).__name__}: {exc}") from None
    if len(body) > max_frame:
        raise LimitExceeded(f"message is {len(body)} bytes, above the frame limit of "
                            f"{max_frame} bytes; send it in smaller pieces",
                            {"size": len(body), "max_frame": max_frame})
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_frame: int = MAX_FRAME) -> int:
    """The body length a 4-byte header announces; refused above ``max_frame`` or at 0."""
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise LimitExceeded(f"frame header announces {length} bytes, above the frame limit "
                            f"of {max_frame} bytes", {"size": length, "max_frame": max_frame})
    if length == 0:
        raise ProtocolError("empty frame: a frame must hold one msgpack map")
    return length


class _Budget:
    """msgpack hooks that see every array and map as it is finished: they count items
    (a budget for the whole frame), refuse non-string keys (``strict_map_key`` lets bytes
    through) and count containers, so depth is only walked when it could exceed the
    limit."""

    __slots__ = ("items", "containers", "max_items")

    def __init__(self, max_items: int):
        self.items = 0
        self.containers = 0
        self.max_items = max_items

    def _count(self, n: int) -> None:
        self.items += n
        self.containers += 1
        if self.items > self.max_items:
            raise ProtocolError(f"frame holds more than {self.max_items} array elements and "
                                f"map entries")

    def on_list(self, obj: list) -> list:
        self._count(len(obj))
        return obj

    def on_map(self, obj: dict) -> dict:
        self._count(len(obj))
        if obj and set(map(type, obj)) != {str}:
            bad = next(k for k in obj if type(k) is not str)
            raise ProtocolError(f"map keys must be strings, got {type(bad).__name__} "
                                f"{bad!r:.60}")
        return obj


def _refuse_ext(code: int, data: bytes) -> None:
    raise ProtocolError(f"ext types are not accepted (got ext type {code})")


def _depth(obj: object) -> int:
    """Deepest nesting of lists/maps, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        children = node.values() if type(node) is dict else node
        stack.extend((c, level + 1) for c in children if type(c) in (list, dict))
    return deepest


# The bytes that may start an array or a map (fix, 16 and 32) and a bin (8, 16, 32):
# each byte not among them is deleted by ``bytes.translate``.
_CONTAINER_BYTES = bytes([*range(0x80, 0xa0), 0xdc, 0xdd, 0xde, 0xdf])
_NOT_CONTAINER = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)
_NOT_BIN = bytes(b for b in range(256) if b not in (0xc4, 0xc5, 0xc6))


def _needs_hooks(body: bytes, max_depth: int, max_items: int) -> bool:
    """Whether :class:`_Budget`'s hooks must watch this body (a Python call for every
    array and map; ~4 % of the daemon's CPU per cold run). Not when the body itself
    bounds what they check: every element takes at least a byte, so a body of at most
    ``max_items`` bytes holds at most that many; a depth is at most the number of bytes
    that may start a container (a string's bytes counted too: an upper bound); and a
    non-string key needs a bin (strict_map_key refuses the rest)."""
    return (len(body) > max_items
            or len(body.translate(None, _NOT_CONTAINER)) > max_depth
            or bool(body.translate(None, _NOT_BIN)))


def decode(body: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> dict:
    """One frame body -> its map. Anything else raises ``ProtocolError``."""
    budget = _Budget(max_items)
    size = len(body)
    hooks = {"list_hook": budget.on_list, "object_hook": budget.on_map} \
        if _needs_hooks(body, max_depth, max_items) else {}
    try:
        value = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
            **hooks,
            max_str_len=size, max_bin_len=size, max_ext_len=0,
            max_array_len=min(size, max_items), max_map_len=min(size, max_items))
    except ProtocolError:
        raise
    except msgpack.ExtraData as exc:
        raise ProtocolError(f"trailing bytes after the message in a frame "
                            f"({len(exc.extra)} extra bytes)") from None
    except msgpack.StackError:
        raise ProtocolError(f"message nests deeper than msgpack's limit (1024); at most "
                            f"{max_depth} levels are accepted") from None
    except RecursionError:  # msgpack's pure-Python fallback has no stack limit of its own
        raise ProtocolError(f"message nests too deep; at most {max_depth} levels are "
                            f"accepted") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"string is not valid UTF-8: {exc.reason} at byte {exc.start}") \
            from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # FormatError (0xc1 ...), incomplete input, length limits, strict_map_key.
        reason = str(exc) or type(exc).__name__
        if "max_ext_len" in reason or "timestamp" in reason:
            # max_ext_len=0 refuses every ext with data, timestamps included (msgpack
            # decodes those without asking ext_hook); ext_hook refuses the empty ones.
            raise ProtocolError("ext types (including msgpack timestamps) are not "
                                "accepted") from None
        raise ProtocolError(f"malformed msgpack: {reason}") from None
    if type(value) is not dict:
        raise ProtocolError(f"a frame must hold a msgpack map, got {type(value).__name__}")
    if budget.containers > max_depth and _depth(value) > max_depth:
        raise ProtocolError(f"message nests deeper than {max_depth} levels")
    return value


class FrameBuffer:
    """Incremental framing for blocking sockets: ``feed()`` bytes, get whole messages."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None   # body length of the frame being read

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return out
                self._need = frame_length(bytes(self._buf[:HEADER.size]), self.max_frame)
                del self._buf[:HEADER.size]
            if len(self._buf) < self._need:
                return out
            body = bytes(self._buf[:self._need])
            del self._buf[:self._need]
            self._need = None
            out.append(decode(body))

    @property
    def partial(self) -> bool:
        """True while a frame has begun but not finished (EOF now means truncation)."""
        return bool(self._buf) or self._need is not None


# A request as this package's clients frame it: {"id": ..., "op": ..., "params": ...}, in
# that order. The id's msgpack int forms: a positive fixint, or uint 8/16/32/64.
_REQUEST_START = b"\x83\xa2id"
_ID_FORMS = {0xcc: struct.Struct(">B"), 0xcd: struct.Struct(">H"), 0xce: struct.Struct(">I"),
             0xcf: struct.Struct(">Q")}


def split_request(body: bytes) -> tuple[int, bytes] | None:
    """A request body's id and the bytes after it (its op and params), when the body
    starts as this package's clients frame one; None otherwise. The rest is then the
    same bytes for the same request sent again, whatever its id."""
    if not body.startswith(_REQUEST_START) or len(body) < 6:
        return None
    form = body[4]
    if form <= 0x7f:
        return form, body[5:]
    unpack = _ID_FORMS.get(form)
    if unpack is None or len(body) < 5 + unpack.size:
        return None
    (rid,) = unpack.unpack_from(body, 5)
    return (rid, body[5 + unpack.size:]) if rid <= MAX_ID else None


# ---------------------------------------------------------------- message shapes

def _check_id(message: dict) -> int:
    rid = message.get("id")
    if type(rid) is not int or not 0 <= rid <= MAX_ID:
        raise ProtocolError(f"message 'id' must be an integer from 0 to 2**63-1, got "
                            f"{rid!r:.40}")
    return rid


def parse_client_message(message: dict) -> tuple[int, str, object]:
    """Classify a decoded client message.

    Returns ``(id, "request", (op, params))`` or ``(id, kind, value)`` for the stream kinds:
    ``"stdin"`` (bytes), ``"stdin_eof"`` (True), ``"resize"`` ((rows, cols)),
    ``"cancel"`` (True).
    """
    rid = _check_id(message)
    keys = set(message) - {"id"}
    if "op" in keys:
        unknown = keys - {"op", "params"}
        if unknown:
            raise ProtocolError(f"request {rid}: unknown fields {sorted(unknown)}; a request "
                                f"has id, op and params", rid)
        op = message["op"]
        if type(op) is not str or not 0 < len(op) <= MAX_OP_LEN:
            raise ProtocolError(f"request {rid}: 'op' must be a non-empty string of at most "
                                f"{MAX_OP_LEN} characters", rid)
        params = message.get("params", {})
        if params is None:
            params = {}
        if type(params) is not dict:
            raise ProtocolError(f"request {rid} ({op}): 'params' must be a map, got "
                                f"{type(params).__name__}", rid)
        return rid, "request", (op, params)
    if len(keys) != 1 or not keys <= set(STREAM_KINDS):
        raise ProtocolError(f"message {rid}: expected 'op' or exactly one of "
                            f"{', '.join(STREAM_KINDS)}, got fields {sorted(keys)}", rid)
    (kind,) = keys
    value = message[kind]
    if kind == "stdin":
        if type(value) is not bytes:
            raise ProtocolError(f"message {rid}: 'stdin' must be bytes (msgpack bin), got "
                                f"{type(value).__name__}", rid)
    elif kind == "resize":
        if (type(value) is not list or len(value) != 2
                or not all(type(v) is int and 0 < v <= 0xFFFF for v in value)):
            raise ProtocolError(f"message {rid}: 'resize' must be [rows, cols], integers from "
                                f"1 to 65535", rid)
        value = (value[0], value[1])
    elif value is not True:
        raise ProtocolError(f"message {rid}: {kind!r} must be true", rid)
    return rid, kind, value


def parse_server_message(message: dict) -> tuple[int | None, str, object]:
    """Classify a decoded daemon message: ``(id, "ok" | "error" | "event", payload)``.
    For events the payload is ``(name, data)``; ``id`` is None for a connection error."""
    rid = message.get("id")
    if rid is not None:
        rid = _check_id(message)
    if "event" in message and rid is not None:
        name = message["event"]
        if type(name) is not str:
            raise ProtocolError(f"event for request {rid}: name must be a string")
        return rid, "event", (name, message.get("data"))
    if "ok" in message and rid is not None:
        return rid, "ok", message["ok"]
    if "error" in message:
        return rid, "error", message["error"]
    raise ProtocolError(f"daemon message {rid}: expected ok, error or event, got fields "
                        f"{sorted(message)}")


def request(rid: int, op: str, params: dict | None = None) -> dict:
    return {"id": rid, "op": op, "params": params or {}}


def hello(client: str) -> dict:
    return request(0, "hello", {"version": PROTOCOL_VERSION, "client": client})


def ok(rid: int | None, value: object) -> dict:
    return {"id": rid, "ok": value}


def error(rid: int | None, exc: SandboxError) -> dict:
    return {"id": rid, "error": exc.to_wire()}


def event(rid: int, name: str, data: object) -> dict:
    return {"id": rid, "event": name, "data": data}


# ---------------------------------------------------------------- params checking

REQUIRED = object()


class Params:
    """Check a request's params, collecting every problem with the field's name::

        p = Params(params, "container.create")
        name = p.get("name", str)                 # required
        tty = p.get("tty", bool, False)           # optional with a default
        cmd = p.get("cmd", list, [], items=str)   # list of str (dict: its values)
        p.done()                                  # InvalidArgument listing all problems,
                                                  # unknown fields included

    ``int`` refuses bools; ``float`` accepts ints; pass a tuple of types to allow several
    (``(str, type(None))`` makes a field nullable).
    """

    def __init__(self, params: dict, where: str):
        self.params = params
        self.where = where
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def get(self, name: str, kind: type | tuple[type, ...], default: object = REQUIRED, *,
            items: type | tuple[type, ...] | None = None) -> object:
        self._seen.add(name)
        if name not in self.params:
            if default is REQUIRED:
                self.problems.append(f"{self.where}: missing field {name!r}")
                return None
            return default
        value = self.params[name]
        if not _is(value, kind):
            self.problems.append(f"{self.where}: field {name!r} must be {_names(kind)}, "
                                 f"got {type(value).__name__}")
            return None if default is REQUIRED else default
        if items is not None and isinstance(value, (list, dict)):
            elements = value.values() if isinstance(value, dict) else value
            bad = [e for e in elements if not _is(e, items)]
            if bad:
                self.problems.append(f"{self.where}: field {name!r} must hold only "
                                     f"{_names(items)}, got {type(bad[0]).__name__}")
                return None if default is REQUIRED else default
        return value

    def done(self) -> None:
        unknown = sorted(set(self.params) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            self.problems.append(f"{self.where}: unknown field(s) {', '.join(unknown)} "
                                 f"(known: {known})")
        if self.problems:
            raise InvalidArgument.of(self.problems)


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    for k in kind if isinstance(kind, tuple) else (kind,):
        if k is object:
            return True
        if k is float:
            ok = type(value) in (int, float)
        elif k in (int, bool):
            ok = type(value) is k           # bool is an int subclass; keep them apart
        else:
            ok = isinstance(value, k)
        if ok:
            return True
    return False


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
