"""The wire protocol without a daemon: framing, strict decoding of hostile bytes, message
shapes, params checking, and the daemon's configuration loading."""
from __future__ import annotations

import json
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxd import errors, protocol
from sandboxd.daemon import DaemonConfig, load_config
from sandboxd.protocol import (MAX_DEPTH, FrameBuffer, Params, ProtocolError, decode, encode,
                               frame_length, parse_client_message, parse_server_message)
from sandboxd.runner.spec import Ulimit

# msgpack-native values the protocol carries (depth stays well under MAX_DEPTH).
scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
           | st.floats(allow_nan=False) | st.text() | st.binary())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5),
                      max_leaves=30)


def body(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def nested(depth: int, kind: str = "list") -> bytes:
    """A frame body nesting ``depth`` containers (the outermost a map, as frames must)."""
    inner = (b"\x91" if kind == "list" else b"\x81\xa1k") * (depth - 1)
    return b"\x81\xa1k" + inner + b"\xc0"


# ---------------------------------------------------------------- round trips

@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_encode_decode_round_trip(message):
    frame = encode(message)
    length = frame_length(frame[:4])
    assert length == len(frame) - 4
    assert decode(frame[4:]) == message


@given(st.lists(st.dictionaries(st.text(max_size=5), values, max_size=3), max_size=5),
       st.integers(1, 7))
def test_frame_buffer_reassembles_any_split(messages, step):
    data = b"".join(encode(m) for m in messages)
    buf, out = FrameBuffer(), []
    for i in range(0, len(data), step):
        out += buf.feed(data[i:i + step])
    assert out == messages
    assert not buf.partial


def test_frame_buffer_reports_partial_frames():
    buf = FrameBuffer()
    frame = encode({"id": 1, "ok": None})
    assert buf.feed(frame[:2]) == [] and buf.partial
    assert buf.feed(frame[2:-1]) == [] and buf.partial
    assert buf.feed(frame[-1:]) == [{"id": 1, "ok": None}] and not buf.partial


def test_bytes_stay_bytes_and_strings_stay_strings():
    message = {"id": 3, "stdin": b"\x00\xff", "text": "héllo", "list": (1, 2)}
    assert decode(encode(message)[4:]) == {"id": 3, "stdin": b"\x00\xff", "text": "héllo",
                                           "list": [1, 2]}


# ---------------------------------------------------------------- hostile input

@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_decode_to_a_map_or_protocol_error(data):
    try:
        assert isinstance(decode(data), dict)
    except ProtocolError as exc:
        assert exc.code == "invalid_argument" and exc.message


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_through_frame_buffer_never_escape_typed_errors(data):
    buf = FrameBuffer(max_frame=1024)
    try:
        for message in buf.feed(data):
            assert isinstance(message, dict)
    except (ProtocolError, errors.LimitExceeded):
        pass


@pytest.mark.parametrize("raw, fragment", [
    (b"\xc1", "malformed"),                                      # the never-used byte
    (b"\x81\xa2id\xc1", "malformed"),
    (b"", "malformed"),                                          # nothing
    (body({"id": 1, "op": "ping"})[:-2], "malformed"),          # truncated
    (body({"id": 1}) + b"\x00", "trailing"),                    # trailing bytes
    (body({"id": 1}) + body({"id": 2}), "trailing"),            # two messages in one frame
    (body([1, 2]), "must hold a msgpack map"),
    (body("hello"), "must hold a msgpack map"),
    (b"\xa2\xff\xfe", "UTF-8"),                                  # invalid UTF-8 str
    (b"\x81\xa1k\xa2\xc3\x28", "UTF-8"),
    (b"\x81\x01\x02", "malformed"),                              # int key (strict_map_key)
    (b"\x81\xc0\x02", "malformed"),                              # nil key
    (b"\x81\xc4\x01k\x02", "map keys must be strings"),          # bin key
    (b"\x81\xa1k\x81\xc4\x01k\x02", "map keys must be strings"),
    (body({"k": msgpack.ExtType(5, b"x")}), "ext type"),
    (b"\x81\xa1k\x91\xd4\xfbx", "ext type"),                    # ext type -5 in a list
    (body({"k": msgpack.Timestamp(1, 0)}), "ext types"),          # bypasses ext_hook
    (body({"k": [1, msgpack.Timestamp(1, 0)]}), "ext types"),
    (b"\xdd\xff\xff\xff\xff", "malformed"),                       # 4G-element array header
    (b"\x81\xa1k\xdb\xff\xff\xff\xff", "malformed"),              # 4 GiB str header
    (b"\x81\xa1k\xc6\xff\xff\xff\xff", "malformed"),              # 4 GiB bin header
    (b"\xdf\xff\xff\xff\xff", "malformed"),                       # 4G-entry map header
])
def test_bad_bodies_are_protocol_errors(raw, fragment):
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert fragment in info.value.message


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 1024, 1025, 2000, 100_000])
def test_deep_nesting_is_refused_without_crashing(kind, depth):
    with pytest.raises(ProtocolError) as info:
        decode(nested(depth, kind))
    assert "nests deeper" in info.value.message


def test_nesting_up_to_the_limit_is_accepted():
    value = decode(nested(MAX_DEPTH, "map"))
    for _ in range(MAX_DEPTH):          # MAX_DEPTH maps, the innermost holding nil
        value = value["k"]
    assert value is None


def test_wide_shallow_messages_are_not_mistaken_for_deep_ones():
    message = {"items": [{"a": [1, 2]} for _ in range(500)]}
    assert decode(body(message)) == message


def test_item_budget_stops_tiny_object_floods():
    # 1M+ one-byte empty maps would become ~70 MiB of dicts from ~1 MiB of input.
    half = b"\xdd" + struct.pack(">I", 600_000) + b"\x80" * 600_000
    flood = b"\x81\xa1k\x92" + half + half      # no single array is over the limit
    with pytest.raises(ProtocolError, match="more than"):
        decode(flood)
    with pytest.raises(ProtocolError, match="more than 10"):
        decode(body({"k": [list(range(6)), list(range(6))]}), max_items=10)


def test_huge_ints_cannot_be_encoded_and_64_bit_ones_round_trip():
    for bad in (1 << 64, -(1 << 63) - 1, 10 ** 40):
        with pytest.raises(ProtocolError, match="cannot encode"):
            encode({"n": bad})
    for good in ((1 << 64) - 1, -(1 << 63)):
        assert decode(encode({"n": good})[4:]) == {"n": good}


def test_unencodable_values_are_protocol_errors():
    for bad in ({"s": {1, 2}}, {"o": object()}):
        with pytest.raises(ProtocolError):
            encode(bad)


def test_frame_headers_above_the_limit_are_refused_before_reading_the_body():
    with pytest.raises(errors.LimitExceeded, match="4294967295 bytes"):
        frame_length(b"\xff\xff\xff\xff")
    with pytest.raises(errors.LimitExceeded):
        frame_length(struct.pack(">I", 1025), max_frame=1024)
    assert frame_length(struct.pack(">I", 1024), max_frame=1024) == 1024
    with pytest.raises(ProtocolError, match="empty frame"):
        frame_length(b"\x00\x00\x00\x00")
    buf = FrameBuffer()
    with pytest.raises(errors.LimitExceeded):
        buf.feed(b"\xff\xff\xff\xff")        # only 4 bytes given: refused at the header


def test_messages_above_the_frame_limit_are_not_encoded():
    with pytest.raises(errors.LimitExceeded, match="above the frame limit of 100"):
        encode({"data": b"x" * 200}, max_frame=100)


# ---------------------------------------------------------------- message shapes

def test_client_messages_are_classified():
    assert parse_client_message({"id": 1, "op": "ping", "params": {}}) == \
        (1, "request", ("ping", {}))
    assert parse_client_message({"id": 2, "op": "ping"}) == (2, "request", ("ping", {}))
    assert parse_client_message({"id": 3, "stdin": b"x"}) == (3, "stdin", b"x")
    assert parse_client_message({"id": 3, "stdin_eof": True}) == (3, "stdin_eof", True)
    assert parse_client_message({"id": 3, "resize": [24, 80]}) == (3, "resize", (24, 80))
    assert parse_client_message({"id": 3, "cancel": True}) == (3, "cancel", True)


@pytest.mark.parametrize("message, fragment, rid", [
    ({"op": "ping"}, "'id' must be an integer", None),
    ({"id": -1, "op": "ping"}, "'id' must be an integer", None),
    ({"id": 1 << 63, "op": "ping"}, "'id' must be an integer", None),
    ({"id": True, "op": "ping"}, "'id' must be an integer", None),
    ({"id": "1", "op": "ping"}, "'id' must be an integer", None),
    ({"id": 1, "op": 5}, "'op' must be a non-empty string", 1),
    ({"id": 1, "op": ""}, "'op' must be a non-empty string", 1),
    ({"id": 1, "op": "x" * 200}, "'op' must be a non-empty string", 1),
    ({"id": 1, "op": "ping", "params": [1]}, "'params' must be a map", 1),
    ({"id": 1, "op": "ping", "extra": 1}, "unknown fields ['extra']", 1),
    ({"id": 1}, "expected 'op' or exactly one of", 1),
    ({"id": 1, "stdin": b"x", "cancel": True}, "expected 'op' or exactly one of", 1),
    ({"id": 1, "stdin": "text"}, "'stdin' must be bytes", 1),
    ({"id": 1, "stdin_eof": False}, "'stdin_eof' must be true", 1),
    ({"id": 1, "cancel": 1}, "'cancel' must be true", 1),
    ({"id": 1, "resize": [24]}, "'resize' must be [rows, cols]", 1),
    ({"id": 1, "resize": [0, 80]}, "'resize' must be [rows, cols]", 1),
    ({"id": 1, "resize": [24, 1 << 20]}, "'resize' must be [rows, cols]", 1),
    ({"id": 1, "resize": [True, 80]}, "'resize' must be [rows, cols]", 1),
])
def test_bad_client_messages_name_the_problem(message, fragment, rid):
    with pytest.raises(ProtocolError) as info:
        parse_client_message(message)
    assert fragment in info.value.message
    assert info.value.request_id == rid


def test_server_messages_are_classified():
    assert parse_server_message({"id": 1, "ok": 5}) == (1, "ok", 5)
    assert parse_server_message({"id": 1, "event": "stdout", "data": b"x"}) == \
        (1, "event", ("stdout", b"x"))
    err = errors.NotFound("no such container: x").to_wire()
    assert parse_server_message({"id": None, "error": err}) == (None, "error", err)
    with pytest.raises(ProtocolError):
        parse_server_message({"id": 1})
    with pytest.raises(ProtocolError):
        parse_server_message({"id": 1, "event": 5})


def test_builders_make_the_documented_shapes():
    assert protocol.hello("sbx/0.1") == {"id": 0, "op": "hello",
                                         "params": {"version": 1, "client": "sbx/0.1"}}
    assert protocol.request(4, "ping") == {"id": 4, "op": "ping", "params": {}}
    assert protocol.ok(4, "pong") == {"id": 4, "ok": "pong"}
    assert protocol.event(4, "exit", {"code": 0}) == {"id": 4, "event": "exit",
                                                       "data": {"code": 0}}
    assert protocol.error(4, errors.Conflict("busy")) == {
        "id": 4, "error": {"code": "conflict", "message": "busy", "details": {}}}


def test_cancelled_crosses_the_wire_by_code():
    rebuilt = errors.from_wire(errors.Cancelled("x was cancelled").to_wire())
    assert type(rebuilt) is errors.Cancelled and rebuilt.message == "x was cancelled"


# ---------------------------------------------------------------- params

def test_params_collect_every_problem_with_field_names():
    p = Params({"name": 5, "tty": "yes", "extra": 1, "cmd": ["a", 2]}, "container.create")
    assert p.get("name", str) is None
    assert p.get("tty", bool, False) is False
    assert p.get("cmd", list, [], items=str) == []
    assert p.get("image", str) is None
    assert p.get("memory", int, None) is None
    with pytest.raises(errors.InvalidArgument) as info:
        p.done()
    problems = info.value.details["problems"]
    assert problems == [
        "container.create: field 'name' must be str, got int",
        "container.create: field 'tty' must be bool, got str",
        "container.create: field 'cmd' must hold only str, got int",
        "container.create: missing field 'image'",
        "container.create: unknown field(s) extra (known: cmd, image, memory, name, tty)",
    ]


def test_params_keep_bool_and_int_apart_and_floats_take_ints():
    p = Params({"n": True, "b": 1, "f": 2, "x": None, "m": {"a": 1}}, "op")
    assert p.get("n", int) is None
    assert p.get("b", bool) is None
    assert p.get("f", float) == 2
    assert p.get("x", (str, type(None))) is None
    assert p.get("m", dict, items=int) == {"a": 1}
    with pytest.raises(errors.InvalidArgument) as info:
        p.done()
    assert info.value.details["problems"] == ["op: field 'n' must be int, got bool",
                                              "op: field 'b' must be bool, got int"]


def test_params_that_are_fine_pass():
    p = Params({"name": "web", "tty": True}, "op")
    assert (p.get("name", str), p.get("tty", bool, False), p.get("n", int, 3)) == \
        ("web", True, 3)
    p.done()


# ---------------------------------------------------------------- hosts and config

def test_hosts_parse_to_socket_paths(monkeypatch):
    assert protocol.parse_host("unix:///run/x.sock") == "/run/x.sock"
    assert protocol.parse_host("/run//x.sock") == "/run/x.sock"
    for bad in ("tcp://127.0.0.1:2375", "relative.sock", "unix://relative"):
        with pytest.raises(errors.InvalidArgument):
            protocol.parse_host(bad)
    monkeypatch.delenv("SANDBOXD_HOST", raising=False)
    assert protocol.resolve_host() == protocol.DEFAULT_SOCKET
    monkeypatch.setenv("SANDBOXD_HOST", "unix:///tmp/env.sock")
    assert protocol.resolve_host() == "/tmp/env.sock"
    assert protocol.resolve_host("/tmp/arg.sock") == "/tmp/arg.sock"


def test_config_defaults_file_and_flags(tmp_path):
    assert load_config() == DaemonConfig()
    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps({"host": "unix:///tmp/a.sock", "root": "/tmp/r",
                               "default-ulimit": ["nofile=1280:2560"], "ip-masq": False,
                               "log_level": "DEBUG", "frame-timeout": 2}))
    config = load_config(str(cfg), root="/tmp/flag-root", default_ulimits=())
    assert config.host == "/tmp/a.sock" and config.root == "/tmp/flag-root"
    assert config.default_ulimits == (Ulimit("nofile", 1280, 2560),)
    assert config.ip_masq is False and config.log_level == "debug"
    assert config.frame_timeout == 2


def test_config_file_takes_every_documented_key(tmp_path):
    # dockerd's daemon.json spellings where it has them (log-opts as a map).
    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps({"log-driver": "local", "default-storage-size": "5G",
                               "log-opts": {"max-size": "10m", "max-file": "3"},
                               "cgroup-parent": "sbx-x", "network-prefix": "sbq",
                               "group": "", "dns": ["10.0.0.1"]}))
    config = load_config(str(cfg))
    assert (config.log_driver, config.default_storage_size) == ("local", 5 << 30)
    assert config.log_opts == ("max-size=10m", "max-file=3")
    assert (config.cgroup_parent, config.network_prefix) == ("sbx-x", "sbq")
    assert config.dns == ("10.0.0.1",) and config.group == ""


@pytest.mark.parametrize("content, fragment", [
    ({"hots": "x"}, "unknown field(s) hots"),
    ({"ip-masq": "yes"}, "field 'ip-masq' must be bool"),
    ({"default-ulimit": ["nofile=2:1"]}, "soft limit 2 is above the hard limit 1"),
    ({"default-ulimit": ["bogus=1"]}, "unknown ulimit 'bogus'"),
    ({"max-connections": 0}, "max-connections: must be positive"),
    ({"root": "relative"}, "root: must be an absolute path"),
    ({"log-level": "loud"}, "log-level: expected one of"),
    ({"log-opts": {"max-size": "huge"}}, "max-size"),
    ({"default-storage-size": "1k"}, "default-storage-size"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_config_files_are_refused_with_the_field(tmp_path, content, fragment):
    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps(content))
    with pytest.raises(errors.InvalidArgument) as info:
        load_config(str(cfg))
    assert fragment in info.value.message


def test_unreadable_config_file_is_named(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="missing.json"):
        load_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(errors.InvalidArgument, match="not valid JSON"):
        load_config(str(bad))


@pytest.mark.parametrize("message", [
    {"op": "x", "params": {"env": ["A=1"], "cmd": ["true"], "n": 200}},   # hooks skipped
    {"op": "x", "text": "é" * 100, "k": [[1], {"a": [2]}]},   # UTF-8 bytes look like headers
    {"op": "x", "data": b"\x00\xc4", "k": [1, 2]},             # a bin: keys must be checked
])
def test_a_body_decodes_the_same_with_or_without_the_budget_hooks(message):
    """decode skips the hooks when the body alone bounds what they check: the result is
    the same either way, and a small frame's budget still holds."""
    raw = body(message)
    assert decode(raw) == message
    with pytest.raises(ProtocolError) as info:
        decode(raw, max_items=3)
    assert "more than 3" in info.value.message


@pytest.mark.parametrize("rid", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                 protocol.MAX_ID])
def test_a_request_splits_into_its_id_and_the_same_bytes_for_any_id(rid):
    raw = body(protocol.request(rid, "container.run", {"config": {"image": "busybox"}}))
    again = body(protocol.request(7, "container.run", {"config": {"image": "busybox"}}))
    got, rest = protocol.split_request(raw)
    assert got == rid and rest == protocol.split_request(again)[1]
    assert raw.endswith(rest) and msgpack.unpackb(b"\x82" + rest) == {
        "op": "container.run", "params": {"config": {"image": "busybox"}}}


@pytest.mark.parametrize("raw", [
    body({"op": "x", "id": 1, "params": {}}),            # another order: decoded whole
    body({"id": 1, "stdin": b"x"}),                        # not a request
    body({"id": -1, "op": "x", "params": {}}),            # a negative id
    b"\x83\xa2id\xcf" + struct.pack(">Q", 2**63) + b"\xa2op",   # above MAX_ID
    b"\x83\xa2id\xcd\x01",                                 # cut short
    b"\x83\xa2id",
])
def test_what_does_not_start_as_our_clients_frame_a_request_is_not_split(raw):
    assert protocol.split_request(raw) is None
