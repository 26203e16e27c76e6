"""Host-side pieces of ipython_ext.session that need no daemon: incremental decoding of
stream text, the nbformat outputs a cell's worker messages become, bundle clean-up."""
from __future__ import annotations

import nbformat
import pytest
from hypothesis import given, strategies as st

from ipython_ext.session import Session, _clean_bundle, _Decoder, _Run


@given(st.text(), st.lists(st.integers(0, 64), max_size=8))
def test_split_utf8_survives_any_chunking(text, cuts):
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    decoder = _Decoder()
    got = "".join(decoder.decode("stdout", data[a:b]) for a, b in zip(points, points[1:]))
    assert got + "".join(t for _, t in decoder.flush()) == text


def test_a_truncated_character_is_replaced_at_the_end():
    decoder = _Decoder()
    assert decoder.decode("stdout", "é".encode()[:1]) == ""
    assert decoder.flush() == [("stdout", "\ufffd")]


def test_worker_messages_become_valid_nbformat_outputs():
    live: list[dict] = []
    run = _Run(3, live.append)
    for message in [
        {"type": "stream", "name": "stdout", "data": b"a"},
        {"type": "stream", "name": "stdout", "data": "é".encode()[:1]},
        {"type": "stream", "name": "stdout", "data": "é\n".encode()[1:]},
        {"type": "stream", "name": "stderr", "data": b"warn\n"},
        {"type": "display", "data": {"text/plain": "d", "image/png": b"\x89P"},
         "metadata": {}},
        {"type": "result", "data": {"text/plain": "r"}, "metadata": {}},
        {"type": "error", "ename": "E", "evalue": "v", "traceback": ["E: v"]},
    ]:
        assert run.handle(message) is False
    assert run.handle({"type": "done", "status": "error", "values": {}}) is True
    assert [o["output_type"] for o in run.outputs] == [
        "stream", "stream", "display_data", "execute_result", "error"]
    assert run.outputs[0]["text"] == "aé\n"                # coalesced, as nbformat keeps
    assert [o.get("text") for o in live[:3]] == ["a", "é\n", "warn\n"]   # live chunks
    assert run.outputs[2]["data"]["image/png"] == "iVA="    # base64 of the bytes
    assert run.outputs[3]["execution_count"] == 3
    assert run.status == "error" and run.error["ename"] == "E"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "x", execution_count=3, outputs=[nbformat.from_dict(o) for o in run.outputs])])
    nbformat.validate(nb)


def test_clear_output_empties_what_came_before():
    run = _Run(1, None)
    run.handle({"type": "stream", "name": "stdout", "data": b"old"})
    run.handle({"type": "clear_output", "wait": False})
    run.handle({"type": "stream", "name": "stdout", "data": b"new"})
    assert run.outputs == [{"output_type": "stream", "name": "stdout", "text": "new"}]


def test_bundles_are_cleaned_for_nbformat():
    assert _clean_bundle({"text/plain": b"t", 3: "x", "application/json": {"a": 1},
                          "text/html": 5}) == {
        "text/plain": "t", "application/json": {"a": 1}, "text/html": "5"}
    assert _clean_bundle(["not", "a", "dict"]) == {"text/plain": "['not', 'a', 'dict']"}


def test_session_checks_its_options_before_any_container():
    with pytest.raises(Exception) as caught:
        Session(None, "host", memory="lots", pids=-5, ulimits=["nofile=x"])
    text = str(caught.value)
    assert "memory" in text and "nofile" in text
