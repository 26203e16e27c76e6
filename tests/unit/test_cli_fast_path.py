"""The ``sbx`` script's click-free path for plain ``run``/``create`` lines (sandboxd/cli/main.py):
it must read every line exactly as the click command does, hand every other line to
click, report errors with the same words and statuses, and load none of click, typing,
asyncio, json or the config model."""
from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from hypothesis import given, settings, strategies as st

from sandboxd import __version__
from sandboxd.cli import commands, run
from sandboxd.cli.app import sbx
from sandboxd.cli.main import fast_main

NO_DAEMON = "unix:///nonexistent/sandboxd-test.sock"   # nothing can listen here
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def click_parse(command: str, args: list[str]) -> dict[str, object]:
    sub = sbx.get_command(click.Context(sbx), command)
    return sub.make_context(command, list(args)).params


def fast_parse(command: str, args: list[str]) -> dict[str, object] | None:
    flags = run.FLAGS + run.RUN_ONLY if command == "run" else run.FLAGS
    parsed = run.parse_flags(args, flags)
    if parsed is None or not parsed[1]:
        return None
    values, (image, *rest) = parsed
    return {**values, "image": image, "command": tuple(rest)}


VALUE = st.text(alphabet="ab-=: 1", max_size=5)
NUMBER = st.integers(-5, 100000).map(str)


@st.composite
def option_words(draw: st.DrawFn, flags: tuple[run.Flag, ...]) -> list[str]:
    """One flag in one of the spellings click accepts."""
    flag = draw(st.sampled_from(flags))
    names = [n for d in flag.decls for n in d.split("/")]
    name = draw(st.sampled_from(names))
    if flag.kind in ("flag", "pair"):
        shorts = [n for n in names if len(n) == 2]
        if shorts and draw(st.booleans()):
            # a cluster: on/off shorts, maybe ending in one that takes a value
            others = [f for f in flags if f.kind == "flag" and len(f.decls[0]) == 2]
            cluster = [draw(st.sampled_from(others)).decls[0][1] for _ in range(draw(
                st.integers(0, 2)))]
            valued = [f for f in flags if f.kind not in ("flag", "pair")
                      and len(f.decls[0]) == 2]
            tail: list[str] = []
            if draw(st.booleans()):
                last = draw(st.sampled_from(valued))
                value = draw(NUMBER if last.kind in ("int", "float") else VALUE)
                cluster.append(last.decls[0][1])
                if value and draw(st.booleans()):
                    cluster.append(value)
                else:
                    tail = [value]
            return ["-" + shorts[0][1] + "".join(cluster), *tail]
        return [name]
    value = draw(NUMBER if flag.kind in ("int", "float") else VALUE)
    if name.startswith("--") and draw(st.booleans()):
        return [f"{name}={value}"]
    if len(name) == 2 and value and draw(st.booleans()):
        return [name + value]
    return [name, value]


@st.composite
def plain_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    command = draw(st.sampled_from(["run", "create"]))
    flags = run.FLAGS + run.RUN_ONLY if command == "run" else run.FLAGS
    words = [w for _ in range(draw(st.integers(0, 6)))
             for w in draw(option_words(flags))]
    if draw(st.booleans()):
        words.append("--")
    words.append(draw(st.sampled_from(["busybox", "reg.local:5000/x:1"])))
    words += draw(st.lists(st.sampled_from(["sh", "-c", "--rm", "-m", "1", "--", "x=y"]),
                           max_size=4))
    return command, words


@settings(max_examples=400, deadline=None)
@given(plain_lines())
def test_plain_lines_parse_as_click_parses_them(line):
    command, args = line
    expected = click_parse(command, args)
    assert fast_parse(command, args) == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["run", "create"]),
       st.lists(st.sampled_from(["-i", "-t", "-it", "-m", "64m", "--rm", "--rm=1", "-x",
                                 "--bogus", "--cpu-quota", "abc", "--", "busybox", "true",
                                 "--help", "-e", "A=1", "--net=none", "-", "-pi"]),
                max_size=6))
def test_any_line_either_parses_as_click_does_or_goes_to_click(command, args):
    fast = fast_parse(command, args)
    if fast is None:
        return            # click reads it (and says what is wrong, or shows help)
    assert fast == click_parse(command, args)


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["run", "--bogus", "busybox"], ["run"], ["run", "-m"],
    ["run", "--cpu-quota", "abc", "busybox"], ["run", "--rm=yes", "busybox"],
    ["--version"], ["-v", "run", "busybox"], ["ps"], ["container", "run", "busybox"],
    ["--debug", "run", "busybox"], ["run", "--", "--help"],
])
def test_other_lines_go_to_click(argv):
    assert fast_main(["-H", NO_DAEMON, *argv]) is None


def test_completion_goes_to_click(monkeypatch):
    monkeypatch.setenv("_SBX_COMPLETE", "bash_complete")
    assert fast_main(["run", "busybox"]) is None


@pytest.mark.parametrize("args", [
    ["run", "--rm", "busybox", "true"],                        # no daemon: 125
    ["run", "-it", "busybox", "sh"],                           # not a terminal: 1
    ["create", "--env-file", "/nonexistent/env", "busybox"],   # a local error: 125 + hint
])
def test_errors_read_as_the_click_path_reads_them(capsys, args):
    fast = fast_main(["-H", NO_DAEMON, *args])
    fast_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        commands.main(["-H", NO_DAEMON, *args])
    assert (fast, fast_err) == (info.value.code, capsys.readouterr().err)
    assert fast != 0 and fast_err.startswith("sbx: ")


@pytest.mark.parametrize("host_words", [
    ["-H", NO_DAEMON], [f"--host={NO_DAEMON}"], [f"-H{NO_DAEMON}"], ["--host", NO_DAEMON],
])
def test_the_host_is_taken_in_every_spelling(capsys, host_words):
    assert fast_main([*host_words, "run", "busybox"]) == 125
    assert "/nonexistent/sandboxd-test.sock" in capsys.readouterr().err


def test_the_script_loads_only_what_a_run_needs():
    """The start-up budget of ``sbx run``: the client and msgpack, nothing else of ours
    or of click, typing, asyncio, json, subprocess (beyond what this interpreter's own
    start-up loads, e.g. through a site .pth)."""
    watched = "('click', 'typing', 'asyncio', 'json', 'sandboxd', 'subprocess', 'dataclasses')"
    listing = (f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
               f"{watched})))")
    before = subprocess.run([sys.executable, "-c", "import sys\n" + listing],
                            capture_output=True, text=True, check=True).stdout.split()
    code = ("import sys\nfrom sandboxd.cli.main import fast_main\n"
            f"status = fast_main(['-H', {NO_DAEMON!r}, 'run', '--rm', '-e', 'A=1', "
            "'busybox', 'true'])\nprint(status)\n" + listing)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "125"
    assert set(out[1:]) - set(before) == {
        "sandboxd", "sandboxd.cli", "sandboxd.cli.common", "sandboxd.cli.main",
        "sandboxd.cli.run", "sandboxd.client", "sandboxd.envfile",
        "sandboxd.errors", "sandboxd.protocol", "sandboxd.version"}


def test_python_m_sandboxd_is_sbx():
    proc = subprocess.run([sys.executable, "-m", "sandboxd", "--version"],
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"sbx version {__version__}\n")
