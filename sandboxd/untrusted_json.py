"""JSON from outside (a client's request, a Dockerfile, an image archive, a registry, a
seccomp profile): ``loads`` turns nesting deep enough to exhaust Python's recursion
(``[[[[...`` a few thousand levels) into the ``ValueError`` that any other bad JSON
raises, so every caller's "not valid JSON" error covers it instead of a RecursionError
escaping as an internal error."""
from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
