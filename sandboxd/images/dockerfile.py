"""A Dockerfile (Sandboxfile) parser: text -> stages of instructions, plus the word
lexer with ``$VAR`` expansion the builder applies to each instruction's arguments.

What is understood: ``FROM [--platform=P] IMAGE [AS NAME]`` (``scratch``, several
stages), ``RUN``/``CMD``/``ENTRYPOINT`` in shell and exec (JSON) form, ``COPY``/``ADD``
(``--from``, ``--chown``, ``--chmod``; JSON or word form), ``ENV``, ``ARG``, ``LABEL``,
``WORKDIR``, ``USER``, ``EXPOSE``, ``SHELL``, ``STOPSIGNAL``, ``VOLUME``,
``HEALTHCHECK [--interval= --timeout= --start-period= --start-interval= --retries=]
CMD …|NONE``, ``MAINTAINER``; line continuations, comments, the ``escape`` parser
directive. Refused with a reason: heredocs, ``RUN --mount``/``--security``, ``ONBUILD``
and any other keyword. A ``# syntax=`` directive names a BuildKit
frontend image; it is ignored (this builder is its own frontend) with a warning.

Expansion follows Docker's shell lexer: ``$NAME``, ``${NAME}``, ``${NAME:-word}``,
``${NAME:+word}``; single quotes are literal; the escape character escapes the next
character (inside double quotes only before ``"``, ``$``, the escape itself).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .. import untrusted_json
from ..errors import InvalidArgument

# Instructions whose arguments are expanded with the build's variables (Docker's list).
EXPANDED = frozenset(("ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                      "VOLUME", "WORKDIR", "ARG"))
KNOWN = frozenset(("FROM", "RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "ENV", "ARG", "LABEL",
                   "WORKDIR", "USER", "EXPOSE", "SHELL", "STOPSIGNAL", "VOLUME",
                   "MAINTAINER", "HEALTHCHECK"))
REFUSED = {
    "ONBUILD": "ONBUILD triggers are not supported by this builder",
}
# Flags each instruction accepts (``--name=value``).
FLAGS = {"FROM": {"platform"}, "COPY": {"from", "chown", "chmod", "link"},
         "ADD": {"chown", "chmod", "link"}, "RUN": set(),
         "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"}}
# Bytes an instruction's variables may expand to: a process's environment string is at
# most 128 KiB (MAX_ARG_STRLEN), so more could not reach a RUN anyway.
MAX_EXPANDED = 1 << 20
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.+?)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?[A-Za-z_]")


@dataclass(frozen=True)
class Instruction:
    """One instruction: ``keyword`` upper-case, ``flags`` its ``--name=value`` flags,
    ``text`` the arguments as written (continuations joined), ``line`` where it starts."""
    keyword: str
    text: str
    line: int
    flags: tuple[tuple[str, str], ...] = ()

    def flag(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.flags:
            if key == name:
                return value
        return default

    def __str__(self) -> str:
        flags = "".join(f"--{k}={v} " for k, v in self.flags)
        return f"{self.keyword} {flags}{self.text}".rstrip()


@dataclass
class Stage:
    """``FROM base [AS name]`` and the instructions up to the next ``FROM``."""
    index: int
    base: Instruction
    name: str = ""
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """``args``: the ``ARG`` instructions before the first ``FROM`` (usable in ``FROM``
    lines); ``warnings`` what was accepted but ignored."""
    args: list[Instruction]
    stages: list[Stage]
    escape: str = "\\"
    warnings: list[str] = field(default_factory=list)

    def steps(self) -> int:
        return len(self.args) + sum(1 + len(s.instructions) for s in self.stages)


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; every problem found is reported at once (``InvalidArgument``
    naming the file and line)."""
    lines = text.splitlines()
    escape, warnings, start = _directives(lines, name)
    problems: list[str] = []
    instructions: list[Instruction] = []
    i = start
    while i < len(lines):
        raw = lines[i]
        first = i + 1
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = [raw]
        more = _continues(raw, escape)
        while more:
            parts[-1] = parts[-1].rstrip()[:-1]       # the escape that continues it
            more = False
            while i < len(lines):
                nxt = lines[i]
                i += 1
                # comment and empty lines inside a continuation are dropped
                if nxt.strip() and not nxt.strip().startswith("#"):
                    parts.append(nxt)
                    more = _continues(nxt, escape)
                    break
        joined = "".join(parts).strip()
        keyword, _, rest = joined.partition(" ")
        if "\t" in keyword:
            keyword, _, more = keyword.partition("\t")
            rest = more + " " + rest
        keyword = keyword.upper()
        where = f"{name}:{first}"
        if keyword in REFUSED:
            problems.append(f"{where}: {REFUSED[keyword]}")
            continue
        if keyword not in KNOWN:
            problems.append(f"{where}: unknown instruction {keyword}")
            continue
        try:
            flags, rest = _flags(keyword, rest.strip(), escape)
        except InvalidArgument as e:
            problems.append(f"{where}: {e.message}")
            continue
        if _HEREDOC.search(rest) and keyword in ("RUN", "COPY", "ADD"):
            problems.append(f"{where}: heredocs (<<EOF) are not supported; put the text in "
                            f"a file in the build context and COPY it")
            continue
        if not rest and keyword not in ("CMD", "ENTRYPOINT", "RUN"):
            problems.append(f"{where}: {keyword} requires at least one argument")
            continue
        instructions.append(Instruction(keyword, rest, first, flags))
    args: list[Instruction] = []
    stages: list[Stage] = []
    names: set[str] = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.text.split()
            stage_name = ""
            if len(words) == 3 and words[1].upper() == "AS":
                stage_name = words[2].lower()
                if not re.match(r"^[a-z][a-z0-9._-]*$", stage_name):
                    problems.append(f"{name}:{ins.line}: invalid stage name {words[2]!r}")
                elif stage_name in names:
                    problems.append(f"{name}:{ins.line}: duplicate stage name {words[2]!r}")
                names.add(stage_name)
            elif len(words) != 1:
                problems.append(f"{name}:{ins.line}: FROM takes an image and optionally "
                                f"'AS name', got {ins.text!r}")
            stages.append(Stage(len(stages), ins, stage_name))
        elif not stages:
            if ins.keyword == "ARG":
                args.append(ins)
            else:
                problems.append(f"{name}:{ins.line}: {ins.keyword} before the first FROM "
                                f"(only ARG may come before it)")
        else:
            stages[-1].instructions.append(ins)
    if not stages and not problems:
        problems.append(f"{name}: no FROM instruction (a build starts FROM an image or "
                        f"FROM scratch)")
    if problems:
        raise InvalidArgument.of(problems)
    return Dockerfile(args, stages, escape, warnings)


def _directives(lines: list[str], name: str) -> tuple[str, list[str], int]:
    """Parser directives: ``# key=value`` lines at the very top."""
    escape, warnings, seen = "\\", [], set()
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m or not line.strip():
            return escape, warnings, i
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise InvalidArgument(f"{name}:{i + 1}: the {key} directive is given twice")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise InvalidArgument(f"{name}:{i + 1}: escape must be \\ or `, got "
                                      f"{value!r}")
            escape = value
        elif key == "syntax":
            warnings.append(f"{name}:{i + 1}: syntax={value} ignored: this builder parses "
                            f"the Dockerfile itself (no frontend image is used)")
        elif key == "check":
            continue
        else:
            return escape, warnings, i                # an ordinary comment
    return escape, warnings, len(lines)


def _continues(line: str, escape: str) -> bool:
    return line.rstrip().endswith(escape)


def _flags(keyword: str, rest: str, escape: str) -> tuple[tuple[tuple[str, str], ...], str]:
    allowed = FLAGS.get(keyword, set())
    flags = []
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        key, eq, value = word[2:].partition("=")
        if keyword == "RUN" and key in ("mount", "network", "security"):
            raise InvalidArgument(f"RUN --{key} is not supported by this builder (use "
                                  f"sbx build --network for the RUN network)")
        if key not in allowed:
            if not allowed:
                break                                 # e.g. RUN --version: a command
            raise InvalidArgument(f"{keyword}: unknown flag --{key} (allowed: "
                                  f"{', '.join('--' + f for f in sorted(allowed))})")
        if not eq:
            raise InvalidArgument(f"{keyword} --{key} needs a value (--{key}=VALUE)")
        flags.append((key, value))
        rest = tail.lstrip()
    return tuple(flags), rest


# ---------------------------------------------------------------- forms of arguments

def exec_form(text: str) -> list[str] | None:
    """The JSON-array form of RUN/CMD/ENTRYPOINT/COPY/SHELL/VOLUME, or None when the
    text is not one (then it is the shell/word form)."""
    if not text.startswith("["):
        return None
    try:
        value = untrusted_json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def command(ins: Instruction, shell: list[str]) -> list[str]:
    """RUN/CMD/ENTRYPOINT's argv: exec form as given, shell form through ``shell``."""
    argv = exec_form(ins.text)
    if argv is not None:
        return argv
    if not ins.text:
        raise InvalidArgument(f"line {ins.line}: {ins.keyword} needs a command")
    return [*shell, ins.text]


def words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Split ``text`` into words as Docker's shell lexer does: quotes removed, the
    escape character applied, ``$VAR`` expanded from ``env`` (unset: empty)."""
    out: list[str] = []
    word: list[str] = []
    started = False
    i, n = 0, len(text)
    expanded = 0
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            if started:
                out.append("".join(word))
                word, started = [], False
            i += 1
            continue
        started = True
        if c == escape:
            if i + 1 < n:
                word.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise InvalidArgument(f"unterminated single quote in {text!r}")
            word.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise InvalidArgument(f"unterminated double quote in {text!r}")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == escape and i + 1 < n and text[i + 1] in ('"', "$", escape):
                    word.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _variable(text, i, env, escape)
                    expanded = _grown(expanded, value, text)
                    word.append(value)
                else:
                    word.append(c)
                    i += 1
        elif c == "$":
            value, i = _variable(text, i, env, escape)
            expanded = _grown(expanded, value, text)
            word.append(value)
        else:
            word.append(c)
            i += 1
    if started:
        out.append("".join(word))
    return out


def _grown(expanded: int, value: str, text: str) -> int:
    """Bytes of variables expanded so far, refused past :data:`MAX_EXPANDED`: ``ENV
    A=$A$A`` doubles a value every line (30 lines: 16 GiB of daemon memory)."""
    expanded += len(value)
    if expanded > MAX_EXPANDED:
        raise InvalidArgument(f"{text[:60]!r}: its variables expand to more than "
                              f"{MAX_EXPANDED} bytes")
    return expanded


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``text`` with variables expanded and quotes kept as written (for FROM, WORKDIR,
    USER ... whose argument is one word): words joined by single spaces."""
    return " ".join(words(text, env, escape))


def _variable(text: str, i: int, env: Mapping[str, str], escape: str) -> tuple[str, int]:
    """Expand the ``$...`` at ``text[i]``; returns (value, index after it)."""
    n = len(text)
    if i + 1 < n and text[i + 1] == "{":
        end = _closing(text, i + 2)
        if end < 0:
            raise InvalidArgument(f"missing '}}' in {text!r}")
        inner = text[i + 2:end]
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?::([-+?])(.*))?$", inner, re.S)
        if not m:
            raise InvalidArgument(f"bad substitution ${{{inner}}} (supported: ${{NAME}}, "
                                  f"${{NAME:-default}}, ${{NAME:+alternative}})")
        name, op, word = m.groups()
        value = env.get(name, "")
        if op == "-":
            value = value or expand_word(word, env, escape)
        elif op == "+":
            value = expand_word(word, env, escape) if value else ""
        elif op == "?" and not value:
            raise InvalidArgument(f"{name}: {word or 'is not set'}")
        return value, end + 1
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:])
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), i + 1 + m.end()


def _closing(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """A ``${NAME:-word}`` operand: variables expanded, no word splitting."""
    parts = words(word.replace(" ", escape + " ") if word else word, env, escape)
    return parts[0] if parts else ""


def assignments(ins: Instruction, env: Mapping[str, str], escape: str = "\\"
                ) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``k=v k2="v 2"`` or the legacy ``k value with spaces``."""
    items = words(ins.text, env, escape)
    if items and "=" not in items[0]:
        if ins.keyword == "LABEL":
            raise InvalidArgument(f"line {ins.line}: LABEL takes key=value pairs, got "
                                  f"{ins.text!r}")
        if len(items) < 2:
            raise InvalidArgument(f"line {ins.line}: {ins.keyword} {items[0]} needs a value "
                                  f"({ins.keyword} {items[0]}=VALUE)")
        # legacy form: the rest of the line (after the name) is the value, as written
        name = items[0]
        raw = ins.text.split(None, 1)[1]
        return [(name, " ".join(words(raw, env, escape)))]
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"line {ins.line}: {ins.keyword}: {item!r} is not "
                                  f"key=value")
        if ins.keyword == "ENV" and not _NAME.match(key):
            raise InvalidArgument(f"line {ins.line}: ENV: {key!r} is not a variable name")
        out.append((key, value))
    return out


def arg_items(ins: Instruction, env: Mapping[str, str], escape: str = "\\"
              ) -> list[tuple[str, str | None]]:
    """ARG arguments: ``name`` or ``name=default``, one or more."""
    out: list[tuple[str, str | None]] = []
    for item in words(ins.text, env, escape):
        key, eq, value = item.partition("=")
        if not _NAME.match(key):
            raise InvalidArgument(f"line {ins.line}: ARG: {key!r} is not a variable name")
        out.append((key, value if eq else None))
    return out


def copy_sources(ins: Instruction, env: Mapping[str, str], escape: str = "\\"
                 ) -> tuple[list[str], str]:
    """COPY/ADD: (sources, destination)."""
    items = exec_form(ins.text)
    if items is None:
        items = words(ins.text, env, escape)
    else:
        items = [expand_word(item, env, escape) for item in items]
    if len(items) < 2:
        raise InvalidArgument(f"line {ins.line}: {ins.keyword} needs a source and a "
                              f"destination, got {ins.text!r}")
    return items[:-1], items[-1]


def healthcheck(ins: Instruction) -> dict:
    """``HEALTHCHECK [flags] CMD …`` or ``HEALTHCHECK NONE`` -> the image config's
    ``Healthcheck`` (Docker's: ``CMD`` exec form, else ``CMD-SHELL`` with the line;
    durations in nanoseconds)."""
    from ..flags import parse_duration
    word, _, rest = ins.text.strip().partition(" ")
    rest = rest.strip()
    if word.upper() == "NONE" and not rest:
        if ins.flags:
            raise InvalidArgument(f"line {ins.line}: HEALTHCHECK NONE takes no options")
        return {"Test": ["NONE"]}
    if word.upper() != "CMD" or not rest:
        raise InvalidArgument(f"line {ins.line}: HEALTHCHECK takes CMD COMMAND or NONE")
    argv = exec_form(rest)
    doc: dict = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", rest]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        value = ins.flag(flag)
        if value is not None:
            seconds = parse_duration(value, f"line {ins.line}: HEALTHCHECK --{flag}")
            if seconds and seconds < 0.001:
                raise InvalidArgument(f"line {ins.line}: HEALTHCHECK --{flag}: must be at "
                                      f"least 1ms or 0, got {value!r}")
            if seconds:
                doc[key] = round(seconds * 1e9)
    retries = ins.flag("retries")
    if retries is not None:
        if not retries.isdigit():
            raise InvalidArgument(f"line {ins.line}: HEALTHCHECK --retries: {retries!r} is "
                                  f"not a whole number >= 0")
        if int(retries):
            doc["Retries"] = int(retries)
    return doc
