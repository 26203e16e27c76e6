"""Docker's detach keys (``--detach-keys``, default ``ctrl-p,ctrl-q``): a sequence typed
on an attached terminal that leaves the container running and ends the attachment.

The daemon watches the client's input (as Docker's does): bytes that begin the sequence
are held back until it is complete (then the client detaches) or broken (then they go
to the container after all).
"""
from __future__ import annotations

import functools

from .errors import InvalidArgument

DEFAULT = "ctrl-p,ctrl-q"
_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


@functools.lru_cache(maxsize=64)
def parse(text: str) -> bytes:
    """``ctrl-p,ctrl-q``, ``a,ctrl-@`` … -> the bytes typed ("" : no detach keys).
    Kept for the texts last seen: every run and attach request carries one, almost
    always the default (a refusal is not kept: it raises)."""
    out = bytearray()
    for key in (k.strip() for k in str(text).split(",")) if text else ():
        if len(key) == 1 and key.isascii():        # one byte, as Docker's len(key) == 1
            out.append(ord(key))
            continue
        name = key.lower()
        if not name.startswith("ctrl-") or len(name) != 6:
            raise InvalidArgument(f"detach-keys: invalid key {key!r}: one character or "
                                  f"ctrl-<value> (a-z, @, [, \\, ], ^, _)")
        char = name[5]
        if "a" <= char <= "z":
            out.append(ord(char) - ord("a") + 1)
        elif char in _CTRL_SPECIAL:
            out.append(_CTRL_SPECIAL[char])
        else:
            raise InvalidArgument(f"detach-keys: invalid key {key!r}: ctrl- takes a-z, "
                                  f"@, [, \\, ], ^ or _")
    return bytes(out)


class Escape:
    """Feeds input through, holding back a partial sequence. ``feed`` returns (bytes
    for the container, whether the sequence is complete)."""

    def __init__(self, keys: bytes):
        self.keys = keys
        self.held = 0                 # how many bytes of keys were matched so far

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.held]:
                self.held += 1
                if self.held == len(self.keys):
                    self.held = 0
                    return bytes(out), True
                continue
            if self.held:                 # broken: what was held goes through after all
                out += self.keys[:self.held]
                self.held = 0
                if byte == self.keys[0]:
                    self.held = 1
                    continue
            out.append(byte)
        return bytes(out), False
