"""The operation table (sandboxd/operations.py), the params it builds, the lifecycle table
(sandboxd/lifecycle.py), and the docs that list them. No daemon, no root."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandboxd import lifecycle, operations
from sandboxd.api import build_config
from sandboxd.errors import Conflict, InvalidArgument
from sandboxd.handlers import Handlers

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- operations: begin -->\n", "<!-- operations: end -->"


def test_every_entry_names_a_method_taking_its_params() -> None:
    names = [op.name for op in operations.TABLE]
    assert len(names) == len(set(names))
    for op in operations.TABLE:
        assert dataclasses.is_dataclass(op.params) and op.params.__dataclass_params__.frozen
        if op.name in operations.BUILT_IN:
            continue
        method = getattr(Handlers, op.method)
        assert inspect.iscoroutinefunction(method), op.name
        annotation = list(inspect.signature(method).parameters.values())[2].annotation
        assert annotation == f"ops.{op.params.__name__}", (op.name, annotation)


def test_protocol_md_lists_the_table() -> None:
    """docs/protocol.md's list is the table's (regenerate it with
    ``python -c 'from sandboxd.operations import markdown; print(markdown())'``)."""
    text = (REPO / "docs/protocol.md").read_text()
    listed = text[text.index(START) + len(START):text.index(END)]
    assert listed == operations.markdown()


def test_operations_md_has_a_section_per_operation() -> None:
    text = (REPO / "docs/operations.md").read_text()
    documented = set(re.findall(r"^###.*?`([a-z]+(?:\.[a-z_]+)?)`", text, re.M))
    documented |= set(re.findall(r"^### `[a-z.]+` / `([a-z.]+)`", text, re.M))
    assert {op.name for op in operations.TABLE} - documented == set()


def test_build_lists_every_problem_with_its_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        operations.build(operations.Exec, {"cmd": [1], "tty": "yes", "bogus": 1},
                         "container.exec")
    assert caught.value.details["problems"] == [
        "container.exec: missing field 'id'",
        "container.exec: field 'cmd' must hold only str, got int",
        "container.exec: field 'tty' must be bool, got str",
        "container.exec: unknown field(s) bogus (known: cmd, console_size, detach, "
        "detach_keys, env, id, stdin, tty, user, workdir)"]


def test_build_converts_and_checks_values() -> None:
    kill = operations.build(operations.Kill, {"id": "web", "signal": "TERM"}, "container.kill")
    assert kill == operations.Kill(id="web", signal=15)
    listed = operations.build(operations.ListContainers, {"filters": {"name": "a"}},
                              "container.list")
    assert listed.filters == {"name": ["a"]} and listed.limit == -1
    exec_ = operations.build(operations.Exec, {"id": "x", "cmd": ["ls"]}, "container.exec")
    assert exec_.cmd == ("ls",) and exec_.env == ()
    for params, cls, op, message in [
            ({"id": "x", "timeout": 2**62}, operations.Stop, "container.stop",
             "timeout must be -1 (wait for ever)"),
            ({"id": "x", "rows": 0, "cols": 70000}, operations.Resize, "container.resize",
             "rows and cols must be from 1 to 65535, got 0x70000"),
            ({"id": "x", "cmd": []}, operations.Exec, "container.exec", "cmd: no command given"),
            ({"id": "x", "cmd": ["ls"], "console_size": [24]}, operations.Exec,
             "container.exec", "console_size [24] is not [rows, cols]"),
            ({"id": "x", "signal": "SIGNOPE"}, operations.Kill, "container.kill",
             "unknown signal"),
            ({"filters": {"name": ["["]}}, operations.ListContainers, "container.list",
             "is not a regular expression"),
            ({"id": "x", "name": "a/b"}, operations.Rename, "container.rename", "a/b")]:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            operations.build(cls, params, op)


def _mutable_parts(value: object, path: str) -> list[str]:
    """Where ``value`` holds something that could be changed in place."""
    if isinstance(value, (list, dict, set, bytearray)):
        return [path]
    if dataclasses.is_dataclass(value):
        if not value.__dataclass_params__.frozen:
            return [path]
        return [p for f in dataclasses.fields(value)
                for p in _mutable_parts(getattr(value, f.name), f"{path}.{f.name}")]
    if isinstance(value, tuple):
        return [p for i, item in enumerate(value) for p in _mutable_parts(item, f"{path}[{i}]")]
    return []


def test_params_the_daemon_shares_between_repeated_requests_are_immutable() -> None:
    """A REPEATS class's params are kept by the daemon and handed to every request sent
    again with the same bytes: nothing in them may be changed in place."""
    config = build_config(
        "busybox", ["sh", "-c", "true"], env={"A": "1"}, labels={"k": "v"}, memory="64m",
        cpus=0.5, pids_limit=64, ulimits=["nofile=128:256"], volumes=["/tmp/x:/x:ro"],
        tmpfs=["/run"], ports=["8080:80"], links=["db:db"], extra_hosts=["h:10.0.0.1"],
        dns=["10.0.0.2"], sysctls={"net.ipv4.ip_forward": "1"}, cap_add=["NET_RAW"],
        log_opts={"max-size": "1m"}, health_cmd="true", devices=["/dev/null"],
        local_files=False)
    raw = {"config": config.to_dict(), "stdin": True, "remove": True, "quiet": True}
    repeating = [op for op in operations.TABLE if op.params.REPEATS]
    assert {op.name for op in repeating} >= {"container.run", "container.create"}
    for op in repeating:
        fields = {f.name for f in dataclasses.fields(op.params)}
        params = op.build({k: v for k, v in raw.items() if k in fields})
        assert _mutable_parts(params, op.name) == []
        hash(params)


def test_the_retired_options_shape_is_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        operations.BY_NAME["container.run"].build({"options": {"image": "busybox"}})
    assert "container.run: field 'options' is no longer accepted; send 'config'" in \
        caught.value.message
    built = operations.BY_NAME["container.config"].build(
        {"options": {"image": "busybox", "memory": "64m"}})
    assert built.options.host.memory == 64 << 20
    run = operations.BY_NAME["container.run"].build({"config": built.options.to_dict()})
    assert run.config == built.options and run.remove is None


def _record(status: str) -> SimpleNamespace:
    return SimpleNamespace(id="ab" * 32, name="web", state=SimpleNamespace(status=status))


def test_lifecycle_rules_are_data() -> None:
    for op, rule in lifecycle.RULES.items():
        assert set(rule.allowed) | set(rule.noop) <= set(lifecycle.STATES), op
        assert rule.then is None or rule.then in lifecycle.STATES
    with pytest.raises(Conflict, match="Container abababababab is exited, not running"):
        lifecycle.check("pause", _record("exited"))
    with pytest.raises(Conflict, match="container web is paused: unpause it first"):
        lifecycle.check("start", _record("paused"))
    with pytest.raises(Conflict, match="Container abababababab is paused, unpause the "
                                       "container before exec"):       # dockerd's words
        lifecycle.check("exec", _record("paused"))
    assert lifecycle.check("start", _record("running")) is False       # already done
    assert lifecycle.check("start", _record("exited")) is True
    assert lifecycle.after("pause") == "paused"
    # a record that says running without a process held has exited
    with pytest.raises(Conflict, match="Container abababababab is not running"):
        lifecycle.check("kill", _record("running"), live=False)


def test_nothing_imports_the_daemon_back() -> None:
    for path in sorted((REPO / "sandboxd").rglob("*.py")):
        if path.name == "daemon.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n == "sandboxd.daemon" or n.endswith(".daemon") or n == "daemon"
                           for n in names), path
