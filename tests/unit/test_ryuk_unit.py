"""sandboxd.ryuk's parsing: Go durations (as Ryuk's env takes them) and filter lines
(query form, as testcontainers sends them). Its removal is proved against a daemon in
tests/integration/test_docker_api_ryuk.py."""
from __future__ import annotations

import pytest

from sandboxd.ryuk import duration, parse_filters


@pytest.mark.parametrize("text, seconds", [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5),
                                           ("2", 2.0), ("1h", 3600.0), (" 1s ", 1.0)])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text, "X") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1s junk", "-1s"])
def test_bad_durations_name_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match="RYUK_RECONNECTION_TIMEOUT"):
        duration(text, "RYUK_RECONNECTION_TIMEOUT")


def test_filter_lines() -> None:
    assert parse_filters("label=org.testcontainers.session-id=abc") == {
        "label": ["org.testcontainers.session-id=abc"]}
    assert parse_filters("label=a%3Db&label=c&name=x") == {"label": ["a=b", "c"],
                                                          "name": ["x"]}
    with pytest.raises(ValueError):
        parse_filters("not a filter")
