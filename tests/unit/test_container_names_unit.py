"""Generated container names (ContainerService._free_name), as Docker's: adjective_noun,
a digit appended after a clash, the short id when every try clashed."""
from __future__ import annotations

import re
from types import SimpleNamespace

from sandboxd.containers import ContainerService

ID = "0123456789abcdef" * 4


class _Store:
    def __init__(self, taken: int) -> None:
        self.taken = taken            # how many look-ups find a container
        self.asked: list[str] = []

    def name_taken(self, name: str) -> bool:
        self.asked.append(name)
        return len(self.asked) <= self.taken


def _name(taken: int) -> tuple[str, list[str]]:
    store = _Store(taken)
    return ContainerService._free_name(SimpleNamespace(store=store), ID), store.asked


def test_a_free_name_is_adjective_noun() -> None:
    name, asked = _name(0)
    assert re.fullmatch(r"[a-z]+_[a-z]+", name) and asked == [name]


def test_after_a_clash_a_digit_follows() -> None:
    name, asked = _name(1)
    assert re.fullmatch(r"[a-z]+_[a-z]+[0-9]", name) and len(asked) == 2


def test_when_every_try_clashes_the_short_id_is_the_name() -> None:
    name, asked = _name(10**6)
    assert name == ID[:12] and len(asked) == 6
