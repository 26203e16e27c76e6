"""A subset of Go's text/template, enough for what people pass to ``docker --format``.

``{{.A.B}}`` paths, ``{{json .X}}``, pipes (``{{.X | json}}``), string and number
literals, the functions Docker adds (json, join, split, lower, upper, title, pad,
truncate, index, len, println), ``{{range}}``/``{{if}}``/``{{with}}`` with ``{{else}}``,
and ``{{-`` / ``-}}`` whitespace trimming. Values print like Go's ``%v``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgument

_ACTION = r"(?s)\{\{(-\s)?(.*?)(\s-)?\}\}"
_DECLARE = r"(?s)^(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.*)$"
_TOKEN = (r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<pipe>\|)|'
          r'(?P<lp>\()|(?P<rp>\))|(?P<num>-?\d+(?:\.\d+)?)|'
          r'(?P<field>(?:\$\w*)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$\w*)|'
          r'(?P<ident>[A-Za-z_][A-Za-z0-9_]*))')


class _Missing:
    """A map key that is not there: Go prints ``<no value>``."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


def _go_str(value: Any) -> str:
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{_go_str(k)}:{_go_str(value[k])}"
                                 for k in sorted(value, key=str)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    return str(value)


def _truthy(value: Any) -> bool:
    return value not in (None, MISSING) and bool(value)


def _json(value: Any) -> str:
    import json
    return json.dumps(_data(None if value is MISSING else value), ensure_ascii=False,
                      separators=(",", ":"))


def _data(value: Any) -> Any:
    """``value`` without its method-like fields (ps's ``.Label``): Go's json of a row
    has only its data."""
    if isinstance(value, Mapping):
        return {k: _data(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_data(v) for v in value]
    return value


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise InvalidArgument(f"format: index of {key!r}: not found") from None
    return value


_FUNCS: dict[str, Any] = {
    "json": _json,
    "join": lambda items, sep: sep.join(_go_str(i) for i in items or ()),
    "split": lambda text, sep: text.split(sep),
    "lower": lambda text: _go_str(text).lower(),
    "upper": lambda text: _go_str(text).upper(),
    "title": lambda text: _go_str(text).title(),
    "pad": lambda text, left, right: " " * int(left) + _go_str(text) + " " * int(right),
    "truncate": lambda text, n: _go_str(text)[:int(n)],
    "index": _index,
    "len": lambda value: len(value),
    "println": lambda *values: " ".join(_go_str(v) for v in values) + "\n",
    "print": lambda *values: "".join(_go_str(v) for v in values),
    "not": lambda value: not _truthy(value),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = re.compile(_TOKEN).match(text, pos)
        if not m or m.end() == pos:
            raise InvalidArgument(f"format: cannot parse {text[pos:]!r} in {{{{{text}}}}}")
        kind = m.lastgroup
        value = m.group(kind)
        # (pipeline).Field: a field of the parenthesised value, not a new operand.
        if kind == "field" and value.startswith(".") and tokens and tokens[-1][0] == "rp" \
                and m.start(kind) == pos:
            kind = "chain"
        tokens.append((kind, value))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def _parse_pipeline(tokens: list[tuple[str, str]], source: str) -> list[list[Any]]:
    """``a b | c`` -> [[a, b], [c]]; each operand is a token or a nested pipeline."""
    commands: list[list[Any]] = [[]]
    stack = [commands]
    for kind, value in tokens:
        if kind == "pipe":
            stack[-1].append([])
        elif kind == "lp":
            nested: list[list[Any]] = [[]]
            stack[-1][-1].append(("pipeline", nested))
            stack.append(nested)
        elif kind == "rp":
            if len(stack) == 1:
                raise InvalidArgument(f"format: unbalanced ')' in {{{{{source}}}}}")
            stack.pop()
        elif kind == "chain":
            stack[-1][-1][-1] = ("chained", (stack[-1][-1][-1], value))
        else:
            stack[-1][-1].append((kind, value))
    if len(stack) != 1 or any(not c for c in commands):
        raise InvalidArgument(f"format: incomplete expression {{{{{source}}}}}")
    return commands


def _parse(template: str) -> list[Any]:
    """Template text -> a tree of ("text", s) / ("out", pipeline) / (block ...)."""
    root: list[Any] = []
    stack: list[tuple[str, Any, list[Any], list[Any] | None]] = []
    current = root
    pos = 0
    pieces: list[Any] = []
    for m in re.finditer(_ACTION, template):
        pieces.append(("text", template[pos:m.start()]))
        pieces.append(("action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))))
        pos = m.end()
    pieces.append(("text", template[pos:]))
    if "{{" in template[pos:]:
        raise InvalidArgument(f"format: unclosed action in {template!r}")
    # Apply {{- and -}} trimming to the neighbouring text.
    for i, piece in enumerate(pieces):
        if piece[0] == "action":
            if piece[2] and i > 0:
                pieces[i - 1] = ("text", pieces[i - 1][1].rstrip())
            if piece[3] and i + 1 < len(pieces):
                pieces[i + 1] = ("text", pieces[i + 1][1].lstrip())
    for piece in pieces:
        if piece[0] == "text":
            if piece[1]:
                current.append(piece)
            continue
        body = piece[1]
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word):].strip()
        if word.startswith("/*"):
            continue
        if word in ("range", "if", "with"):
            block: list[Any] = []
            names: tuple[str, ...] = ()
            declared = re.match(_DECLARE, rest) if word == "range" else None
            if declared:                 # {{range $k, $v := .Map}}
                names = tuple(n for n in declared.group(1, 2) if n)
                rest = declared.group(3)
            node = [word, _parse_pipeline(_tokenize(rest), body), block, None, names]
            current.append(node)
            stack.append((word, node, current, None))
            current = block
        elif word == "else":
            if not stack or stack[-1][1][3] is not None:
                raise InvalidArgument(f"format: unexpected {{{{else}}}} in {template!r}")
            node = stack[-1][1]
            node[3] = []
            current = node[3]
        elif word == "end":
            if not stack:
                raise InvalidArgument(f"format: unexpected {{{{end}}}} in {template!r}")
            _, _, parent, _ = stack.pop()
            current = parent
        elif not body:
            raise InvalidArgument(f"format: empty action {{{{}}}} in {template!r}")
        else:
            current.append(("out", _parse_pipeline(_tokenize(body), body)))
    if stack:
        raise InvalidArgument(f"format: missing {{{{end}}}} for {{{{{stack[-1][0]}}}}} "
                              f"in {template!r}")
    return root


def _field(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        if isinstance(value, Mapping):
            value = value.get(name, MISSING)
        elif value is None or value is MISSING:
            raise InvalidArgument(f"format: nil pointer evaluating .{name}")
        else:
            raise InvalidArgument(f"format: can't evaluate field {name} in "
                                  f"{type(value).__name__} {_go_str(value)!r}")
    return value


def _operand(token: tuple[str, Any], dot: Any, names: Mapping[str, Any]) -> Any:
    kind, value = token
    if kind == "pipeline":
        return _eval_pipeline(value, dot, names)
    if kind == "chained":
        inner, path = value
        return _field(_operand(inner, dot, names), path)
    if kind == "str":
        if value.startswith("`"):
            return value[1:-1]
        import json
        return json.loads(value)
    if kind == "num":
        return float(value) if "." in value else int(value)
    if kind == "field":
        if value.startswith("$"):
            var, dotted, path = value.partition(".")
            if var not in names:
                raise InvalidArgument(f"format: undefined variable {var}")
            return _field(names[var], path) if dotted else names[var]
        return _field(dot, value)
    if kind == "ident":
        if value in ("true", "false"):
            return value == "true"
        if value == "nil":
            return None
        raise InvalidArgument(f"format: function {value!r} used as a value")
    raise InvalidArgument(f"format: unexpected {value!r}")


def _eval_command(command: list[Any], dot: Any, names: Mapping[str, Any],
                  piped: list[Any]) -> Any:
    head = command[0]
    if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
        func = _FUNCS.get(head[1])
        if func is None:
            raise InvalidArgument(f"format: function {head[1]!r} not defined "
                                  f"(known: {', '.join(sorted(_FUNCS))})")
        args = [_operand(t, dot, names) for t in command[1:]] + piped
        try:
            return func(*args)
        except TypeError:
            raise InvalidArgument(f"format: wrong arguments for {head[1]}") from None
    value = _operand(head, dot, names)
    if callable(value):              # a method-like field such as ps's .Label "key"
        return value(*([_operand(t, dot, names) for t in command[1:]] + piped))
    if len(command) > 1 or piped:
        raise InvalidArgument("format: only functions take arguments")
    return value


def _eval_pipeline(pipeline: list[list[Any]], dot: Any, names: Mapping[str, Any]) -> Any:
    value: Any = None
    for i, command in enumerate(pipeline):
        value = _eval_command(command, dot, names, [value] if i else [])
    return value


def _execute(nodes: list[Any], dot: Any, names: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(_go_str(_eval_pipeline(node[1], dot, names)))
        else:
            kind, pipeline, body, otherwise, declared = node
            value = _eval_pipeline(pipeline, dot, names)
            if kind == "range":
                if isinstance(value, Mapping):   # Go ranges over maps in key order
                    pairs = [(k, value[k]) for k in sorted(value, key=str)]
                elif value is MISSING or value is None:
                    pairs = []
                else:
                    pairs = list(enumerate(value))
                for key, item in pairs:
                    scope = dict(names)
                    if len(declared) == 1:
                        scope[declared[0]] = item
                    elif len(declared) == 2:
                        scope[declared[0]], scope[declared[1]] = key, item
                    _execute(body, item, scope, out)
                if not pairs and otherwise:
                    _execute(otherwise, dot, names, out)
            elif _truthy(value):
                _execute(body, value if kind == "with" else dot, names, out)
            elif otherwise:
                _execute(otherwise, dot, names, out)


def render_template(template: str, value: Any) -> str:
    """Evaluate a Go-template ``--format`` string against a JSON-like value.
    ``json`` alone (Docker's shorthand) prints the value as JSON."""
    if template.strip() == "json":
        return _json(value)
    out: list[str] = []
    _execute(_parse(template), value, {"$": value}, out)
    return "".join(out)
