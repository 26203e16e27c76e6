"""``sbx`` without a daemon: Docker's flags in every command's help, Docker's exit status
125 for bad flags and bad values (refused before any connection is made), the TTY check,
shell completion, and the start-up import budget (what the click app loads).
The ``sbx`` script's click-free path for run/create is tested in test_cli_fast_path.py."""
from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from sandboxd import __version__
from sandboxd.cli import commands, containers
from sandboxd.cli.app import sbx as sbx_group
from sandboxd.cli.common import CliError

NO_DAEMON = "unix:///nonexistent/sandboxd-test.sock"   # nothing can listen here


def sbx(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``sbx`` in-process through its real entry point (exit codes included)."""
    with pytest.raises(SystemExit) as info:
        commands.main(["-H", NO_DAEMON, *args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


DOCKER_FLAGS = {
    "run": ["-i", "--interactive", "-t", "--tty", "-d", "--detach", "--rm", "--name", "-e",
            "--env", "--env-file", "-v", "--volume", "--tmpfs", "-w", "--workdir", "-u",
            "--user", "-h", "--hostname", "-m", "--memory", "--memory-swap", "--cpus",
            "--cpu-period", "--cpu-quota", "--cpu-shares", "--pids-limit", "--ulimit",
            "--uts", "--net", "--network", "--link", "-p", "--publish", "--read-only",
            "--init", "--cap-add", "--cap-drop", "--label", "--stop-timeout", "--timeout",
            "--entrypoint", "--sig-proxy"],
    "create": ["--name", "-m", "--memory", "--cpus", "--pids-limit", "--ulimit", "-p", "-v",
               "--tmpfs", "--rm", "-t", "-i"],
    "start": ["-a", "--attach", "-i", "--interactive"],
    "stop": ["-t", "--time"],
    "restart": ["-t", "--time"],
    "kill": ["-s", "--signal"],
    "rm": ["-f", "--force"],
    "ps": ["-a", "--all", "-q", "--quiet", "--filter", "--format", "--no-trunc", "-n", "-l"],
    "logs": ["-f", "--follow", "--tail", "-t", "--timestamps", "--since", "--until"],
    "exec": ["-i", "--interactive", "-t", "--tty", "-e", "--env", "-w", "--workdir", "-u",
             "--user", "-d", "--detach"],
    "attach": ["--no-stdin", "--sig-proxy"],
    "inspect": ["-f", "--format", "--type"],
    "wait": [],
    "top": [],
    "stats": ["--no-stream", "-a", "--all", "--format", "--no-trunc"],
    "cp": ["-a", "--archive", "-L", "--follow-link"],
    "pause": [],
    "unpause": [],
    "update": ["-m", "--memory", "--memory-swap", "--cpus", "--cpu-period", "--cpu-quota",
               "--cpu-shares", "--pids-limit"],
    "rename": [],
    "import": ["-m", "--message"],
    "images": ["-a", "-q", "--quiet", "--format", "--no-trunc"],
    "rmi": ["-f", "--force"],
    "info": ["-f", "--format"],
    "version": ["-f", "--format"],
}


@pytest.mark.parametrize("command", sorted(DOCKER_FLAGS))
def test_help_lists_dockers_flags(capsys, command):
    code, out, _ = sbx(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"Usage: sbx {command} ")
    for flag in DOCKER_FLAGS[command]:
        assert f" {flag}" in out or f"{flag}," in out, (command, flag)


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = sbx(capsys, "--help")
    assert code == 0
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines()
              if line.strip()}
    assert set(DOCKER_FLAGS) | {"container", "image"} <= listed


@pytest.mark.parametrize("args", [
    ["container", "ls", "--help"], ["container", "prune", "--help"],
    ["container", "run", "--help"], ["image", "ls", "--help"], ["image", "import", "--help"],
])
def test_management_commands(capsys, args):
    code, out, _ = sbx(capsys, *args)
    assert code == 0 and out.startswith(f"Usage: sbx {args[0]} {args[1]} ")


def test_run_usage_line_reads_like_dockers(capsys):
    _, out, _ = sbx(capsys, "run", "--help")
    assert out.splitlines()[0] == "Usage: sbx run [OPTIONS] IMAGE [COMMAND] [ARG...]"


def test_version_flag(capsys):
    code, out, _ = sbx(capsys, "--version")
    assert (code, out) == (0, f"sbx version {__version__}\n")


@pytest.mark.parametrize("args, words", [
    (["run", "--bogus", "busybox"], "No such option"),
    (["run"], "Missing argument 'IMAGE'"),
    (["ps", "-x"], "No such option"),
    (["stop"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
    (["run", "--cpu-quota", "abc", "busybox"], "'abc' is not a valid integer"),
])
def test_flag_errors_exit_125_like_docker(capsys, args, words):
    code, out, err = sbx(capsys, *args)
    assert code == 125
    assert words in err and err.startswith("sbx: ")
    assert "--help' " in err or err.rstrip().endswith("--help'.")
    assert out == ""


def test_exec_and_update_and_kill_parse_locally(capsys):
    assert "nothing to change" in sbx(capsys, "update", "c1")[2]
    code, _, err = sbx(capsys, "update", "--cpus", "1", "--cpu-quota", "20000", "c1")
    assert code == 125 and "--cpus and --cpu-quota" in err
    code, _, err = sbx(capsys, "kill", "-s", "NOPE", "c1")
    assert code == 125 and "unknown signal" in err
    code, _, err = sbx(capsys, "exec", "-w", "relative", "c1", "true")
    assert code == 125 and "workdir" in err
    code, _, err = sbx(capsys, "ps", "--filter", "colour=red")
    assert code == 125 and "filter" in err


def test_interactive_tty_needs_a_terminal(capsys):
    # pytest's stdin is not a terminal; Docker says this and exits 1.
    code, _, err = sbx(capsys, "run", "-it", "busybox", "sh")
    assert code == 1 and "the input device is not a TTY" in err


def test_no_daemon_is_a_clear_125(capsys):
    code, _, err = sbx(capsys, "ps")
    assert code == 125
    assert "cannot connect to sandboxd" in err and "/nonexistent/sandboxd-test.sock" in err
    assert "Error response from daemon" not in err


def test_command_arguments_after_the_image_belong_to_the_command():
    ctx = sbx_group.make_context("sbx", ["run", "--rm", "busybox", "ls", "-la", "--rm"])
    sub = sbx_group.get_command(ctx, "run")
    sub_ctx = sub.make_context("run", ["--rm", "busybox", "ls", "-la", "--rm", "-m", "1"])
    assert sub_ctx.params["command"] == ("ls", "-la", "--rm", "-m", "1")
    assert sub_ctx.params["auto_remove"] is True and sub_ctx.params["memory"] is None


def test_combined_short_flags_like_docker():
    sub = sbx_group.get_command(click.Context(sbx_group), "run")
    params = sub.make_context("run", ["-itd", "-m64m", "busybox"]).params
    assert (params["interactive"], params["tty"], params["detach"], params["memory"]) == (
        True, True, True, "64m")


@pytest.mark.parametrize("text, expected", [
    ("web:/etc/hosts", ("web", "/etc/hosts")),
    ("web:", ("web", "/")),
    ("/local/path", None),
    ("./a:b", None),
    ("-", None),
    ("plainfile", None),
])
def test_cp_references(text, expected):
    assert containers._cp_ref(text) == expected


def test_since_values():
    assert containers._when("1700000000", "since") == 1_700_000_000.0
    assert containers._when("2023-11-14T22:13:20Z", "since") == 1_700_000_000.0
    assert containers._when(None, "since") == 0.0
    import time
    assert abs(containers._when("10m", "since") - (time.time() - 600)) < 5
    with pytest.raises(CliError):
        containers._when("yesterday", "since")


def _sbx_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run(
        [sys.executable, "-c", "from sandboxd.cli.commands import main; main()", *args],
        env={**os.environ, "PYTHONPATH": root, **env}, capture_output=True, text=True,
        timeout=60)


def test_shell_completion_script_and_words():
    script = _sbx_process({"_SBX_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "_sbx_completion" in script.stdout
    words = _sbx_process({"_SBX_COMPLETE": "bash_complete", "COMP_WORDS": "sbx ru",
                          "COMP_CWORD": "1"})
    assert "plain,run" in words.stdout.split()
    flags = _sbx_process({"_SBX_COMPLETE": "bash_complete", "COMP_WORDS": "sbx run --memo",
                          "COMP_CWORD": "2"})
    assert "plain,--memory" in flags.stdout.split()
    # Container names come from the daemon; with none running, completion stays quiet.
    names = _sbx_process({"_SBX_COMPLETE": "bash_complete", "COMP_WORDS": "sbx stop ",
                          "COMP_CWORD": "2", "SANDBOXD_HOST": NO_DAEMON})
    assert names.returncode == 0 and names.stderr == ""


def test_start_up_imports_only_click():
    """The start-up budget of the click app (the lines the fast path of
    test_cli_fast_path.py hands on): it must not load the client, msgpack, asyncio, json or
    the config model before a command needs them."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; import sandboxd.cli.commands; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('msgpack', 'asyncio', 'json', 'sandboxd', 'threading', 'subprocess'))))")
    loaded = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                                                               "PYTHONPATH": root},
                            capture_output=True, text=True, check=True).stdout.split()
    ours = {m for m in loaded if m.startswith("sandboxd.cli.")}
    assert ours == {"sandboxd.cli.app", "sandboxd.cli.commands", "sandboxd.cli.common",
                    "sandboxd.cli.containers", "sandboxd.cli.images", "sandboxd.cli.networks",
                    "sandboxd.cli.run", "sandboxd.cli.system"}, loaded
    assert set(loaded) - ours <= {"sandboxd", "sandboxd.cli", "sandboxd.errors",
                                  "sandboxd.version", "threading"}, loaded


def test_error_labels_follow_docker(capsys):
    """"Error response from daemon" only for the daemon's answers; the program's name
    before it only for run and create (Docker's ``docker: Error response …``)."""
    from sandboxd.cli.common import command_of, report
    from sandboxd.errors import NotFound, from_wire
    daemon_error = from_wire({"code": "not_found", "message": "No such container: x"})
    assert report(daemon_error, "rm") == 125
    assert capsys.readouterr().err == "Error response from daemon: No such container: x\n"
    report(daemon_error, "run")
    assert capsys.readouterr().err == \
        "sbx: Error response from daemon: No such container: x\n"
    report(NotFound("no such file: ./x"), "cp")          # found by the client itself
    assert capsys.readouterr().err == "sbx: no such file: ./x\n"
    assert command_of(["-H", "unix:///s", "container", "run", "busybox"]) == "run"
    assert command_of(["--host=unix:///s", "ps", "-a"]) == "ps"
