"""``sbx run`` and ``sbx create`` without click.

``sbx run`` starts once per container in scripts, and importing click alone costs ~20 ms,
more than the container. So the flags of run/create are one table here (:data:`FLAGS`):
:mod:`.containers` builds its click options from it, and :func:`.main.fast_main` parses
the same table itself (:func:`parse_flags`) when the command line is plain. Anything it
does not fully understand (help, completion, other commands, a bad flag or value) goes
to the click app, so errors and help read the same whichever path a line takes.

This module imports only the standard library's sys at load time.
"""
from __future__ import annotations

import sys

from ..errors import InvalidArgument
from .common import (EXIT_DAEMON, CliError, Progress, check_tty, connection, follow, local,
                     pump, terminal_size)

TYPE_CHECKING = False
if TYPE_CHECKING:                    # annotations only: typing costs ~2 ms of every start
    from collections.abc import Callable, Sequence
    from typing import Any

    from ..client import Connection


# ---------------------------------------------------------------- the flags

class Flag:
    """One flag of run/create. ``kind``: ``flag`` (on/off), ``str``, ``int``, ``float``,
    ``multi`` (repeatable, a tuple of strings) or ``pair`` (``--x/--no-x``)."""

    __slots__ = ("decls", "dest", "kind", "default", "metavar", "help")

    def __init__(self, *decls: str, kind: str = "str", dest: str = "",
                 default: Any = None, metavar: str | None = None, help: str = ""):
        self.decls = decls
        # click's rule: the first long name (the "on" half of a pair), else the first.
        names = [d.split("/")[0] for d in decls]
        name = next((n for n in names if n.startswith("--")), names[0])
        self.dest = dest or name.lstrip("-").replace("-", "_")
        self.kind = kind
        self.default = {"flag": False, "multi": ()}.get(kind, default)
        self.metavar = metavar
        self.help = help


FLAGS: tuple[Flag, ...] = (
    Flag("-i", "--interactive", kind="flag", help="Keep STDIN open even if not attached"),
    Flag("-t", "--tty", kind="flag", help="Allocate a pseudo-TTY"),
    Flag("--name", metavar="NAME", help="Assign a name to the container"),
    Flag("-e", "--env", kind="multi", metavar="KEY[=VALUE]",
         help="Set environment variables"),
    Flag("--env-file", kind="multi", metavar="FILE",
         help="Read in a file of environment variables"),
    Flag("-v", "--volume", kind="multi", metavar="[SRC:]DST[:ro]",
         help="Bind mount a host path (SRC absolute) or a named volume (SRC a name; "
              "none: a new anonymous volume)"),
    Flag("--mount", kind="multi", metavar="type=bind|volume|tmpfs,...",
         help="Attach a filesystem mount to the container"),
    Flag("--volumes-from", kind="multi", metavar="CONTAINER[:ro|rw]",
         help="Mount volumes from the specified container(s)"),
    Flag("--tmpfs", kind="multi", metavar="PATH[:OPTS]",
         help="Mount a tmpfs directory (size=1g unless OPTS give one)"),
    Flag("-w", "--workdir", default="", metavar="DIR",
         help="Working directory inside the container"),
    Flag("-u", "--user", default="", metavar="USER[:GROUP]",
         help="Username or UID (format: <name|uid>[:<group|gid>])"),
    Flag("-h", "--hostname", default="", metavar="NAME", help="Container host name"),
    Flag("-m", "--memory", metavar="BYTES", help="Memory limit (e.g. 64m)"),
    Flag("--memory-swap", metavar="BYTES",
         help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap"),
    Flag("--cpus", metavar="DECIMAL", help="Number of CPUs"),
    Flag("--cpu-period", kind="int", metavar="INT",
         help="Limit CPU CFS (Completely Fair Scheduler) period"),
    Flag("--cpu-quota", kind="int", metavar="INT",
         help="Limit CPU CFS (Completely Fair Scheduler) quota"),
    Flag("-c", "--cpu-shares", kind="int", metavar="INT", help="CPU shares (relative weight)"),
    Flag("--pids-limit", kind="int", metavar="INT",
         help="Tune container pids limit (set -1 for unlimited)"),
    Flag("--ulimit", kind="multi", metavar="NAME=SOFT[:HARD]", help="Ulimit options"),
    Flag("--uts", default="", metavar="MODE", help="UTS namespace to use"),
    Flag("--ipc", default="", metavar="MODE", help="IPC mode to use"),
    Flag("--pid", default="", metavar="MODE", help="PID namespace to use"),
    Flag("--network", "--net", dest="network", default="default", metavar="NETWORK",
         help="Connect a container to a network"),
    Flag("--ip", default="", metavar="IP",
         help="IPv4 address (e.g., 172.30.100.104) on a user network"),
    Flag("--shm-size", default=None, metavar="SIZE",
         help="Size of /dev/shm (e.g. 128m) [default: 64m]"),
    Flag("--network-alias", kind="multi", metavar="NAME",
         help="Add network-scoped alias for the container"),
    Flag("--link", kind="multi", metavar="NAME[:ALIAS]", help="Add link to another container"),
    Flag("--dns", kind="multi", metavar="IP", help="Set custom DNS servers"),
    Flag("--dns-search", kind="multi", metavar="DOMAIN",
         help="Set custom DNS search domains ('.' for none)"),
    Flag("--dns-option", "--dns-opt", dest="dns_option", kind="multi", metavar="OPT",
         help="Set DNS options"),
    Flag("--add-host", kind="multi", metavar="HOST:IP",
         help="Add a custom host-to-IP mapping (host:ip; ip host-gateway: the default "
              "bridge's gateway)"),
    Flag("-p", "--publish", kind="multi", metavar="[IP:]HOST:CTR[/PROTO]",
         help="Publish a container's port(s) to the host"),
    Flag("-P", "--publish-all", kind="flag", help="Publish all exposed ports to random ports"),
    Flag("--expose", kind="multi", metavar="PORT[/PROTO]",
         help="Expose a port or a range of ports"),
    Flag("--read-only", kind="flag",
         help="Mount the container's root filesystem as read only"),
    Flag("--init", kind="flag",
         help="Run an init inside the container that forwards signals and reaps processes"),
    Flag("--cap-add", kind="multi", metavar="CAP", help="Add Linux capabilities"),
    Flag("--cap-drop", kind="multi", metavar="CAP", help="Drop Linux capabilities"),
    Flag("--security-opt", kind="multi", metavar="OPT",
         help="Security options (seccomp=unconfined|PROFILE.json, no-new-privileges)"),
    Flag("--privileged", kind="flag",
         help="Give extended privileges to this container (all capabilities, no seccomp, "
              "no masked paths)"),
    Flag("-l", "--label", kind="multi", metavar="KEY[=VALUE]",
         help="Set meta data on a container"),
    Flag("--entrypoint", metavar="CMD", help="Overwrite the default ENTRYPOINT of the image"),
    Flag("--stop-signal", default="SIGTERM", metavar="SIGNAL",
         help="Signal to stop the container"),
    Flag("--stop-timeout", kind="int", metavar="SECONDS",
         help="Timeout (in seconds) to stop a container"),
    Flag("--timeout", kind="float", metavar="SECONDS",
         help="Kill the container after this many seconds (sandboxd)"),
    Flag("--storage-opt", kind="multi", metavar="size=SIZE",
         help="Cap the writable layer, e.g. size=20G [default: the daemon's, 10G]"),
    Flag("--log-driver", default="", metavar="DRIVER",
         help="Logging driver: json-file, local or none [default: the daemon's]"),
    Flag("--log-opt", kind="multi", metavar="KEY=VALUE",
         help="Log driver options: max-size=SIZE, max-file=N [default: 20m, 5]"),
    Flag("--rm", kind="flag", dest="auto_remove",
         help="Automatically remove the container when it exits"),
    Flag("--restart", default="no", metavar="POLICY",
         help="Restart policy to apply when a container exits: no, on-failure[:N], always, "
              "unless-stopped"),
    Flag("--health-cmd", metavar="CMD", help="Command to run to check health"),
    Flag("--health-interval", metavar="DURATION",
         help="Time between running the check (ms|s|m|h) [default: 30s]"),
    Flag("--health-timeout", metavar="DURATION",
         help="Maximum time to allow one check to run (ms|s|m|h) [default: 30s]"),
    Flag("--health-retries", kind="int", metavar="INT",
         help="Consecutive failures needed to report unhealthy [default: 3]"),
    Flag("--health-start-period", metavar="DURATION",
         help="Start period for the container to initialize before starting health-retries "
              "countdown (ms|s|m|h) [default: 0s]"),
    Flag("--health-start-interval", metavar="DURATION",
         help="Time between running the check during the start period (ms|s|m|h) "
              "[default: 5s]"),
    Flag("--no-healthcheck", kind="flag", help="Disable any container-specified HEALTHCHECK"),
    Flag("--sysctl", kind="multi", metavar="KEY=VALUE",
         help="Sysctl options (namespaced ones: net.*, fs.mqueue.*, kernel.shm*/msg*/sem)"),
    Flag("--group-add", kind="multi", metavar="GROUP", help="Add additional groups to join"),
    Flag("--memory-reservation", metavar="BYTES", help="Memory soft limit"),
    Flag("--oom-kill-disable", kind="flag", help="Disable OOM Killer (cgroup v1 only)"),
    Flag("--cpuset-cpus", default="", metavar="CPUS",
         help="CPUs in which to allow execution (0-3, 0,1)"),
    Flag("--device", kind="multi", metavar="DEVICE",
         help="Add a host device (only the default ones: null, zero, full, random, "
              "urandom, tty, ptmx, console)"),
    Flag("--cidfile", metavar="FILE", help="Write the container ID to the file"),
    Flag("--label-file", kind="multi", metavar="FILE",
         help="Read in a line delimited file of labels"),
    Flag("--pull", default="missing", metavar="POLICY",
         help='Pull image before running ("always", "missing", "never")'),
    Flag("--platform", metavar="OS/ARCH[/VARIANT]",
         help="Set platform if server is multi-platform capable (the image pulled when "
              "it is missing or for another platform) [default: this machine's]"),
)

RUN_ONLY: tuple[Flag, ...] = (
    Flag("-d", "--detach", kind="flag", help="Run container in background and print container ID"),
    Flag("--sig-proxy/--no-sig-proxy", kind="pair", default=True,
         help="Proxy received signals to the process"),
    Flag("--detach-keys", metavar="KEYS",
         help="Override the key sequence for detaching a container [default: "
              "ctrl-p,ctrl-q]"),
)

_CONVERT: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def parse_flags(args: Sequence[str], flags: Sequence[Flag]
                ) -> tuple[dict[str, Any], list[str]] | None:
    """``args`` after the command name as click parses them (options up to the first
    argument, ``--`` ends them, clustered short flags, ``-mVALUE``, ``--name=VALUE``):
    the values by dest, and the arguments. None when anything is not plain, so the
    caller hands the line to click for its error or help."""
    by_name: dict[str, tuple[Flag, bool]] = {}
    for flag in flags:
        for decl in flag.decls:
            on, _, off = decl.partition("/")
            by_name[on] = (flag, True)
            if off:
                by_name[off] = (flag, False)
    values: dict[str, Any] = {f.dest: f.default for f in flags}

    def store(flag: Flag, value: str) -> bool:
        if flag.kind == "multi":
            values[flag.dest] = (*values[flag.dest], value)
            return True
        try:
            values[flag.dest] = _CONVERT[flag.kind](value)
        except ValueError:
            return False
        return True

    i = 0

    def value_of(attached: str | None) -> str | None:
        """The value written in this word, else the next word (click takes it even when
        it starts with a dash); None at the end of the line."""
        nonlocal i
        if attached is not None:
            return attached
        i += 1
        return args[i] if i < len(args) else None

    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg[:1] != "-" or arg == "-" or arg == "--help":
            break
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
            found = by_name.get(name)
            if found is None or (eq and found[0].kind in ("flag", "pair")):
                return None
            if found[0].kind in ("flag", "pair"):
                values[found[0].dest] = found[1]
            else:
                value = value_of(attached if eq else None)
                if value is None or not store(found[0], value):
                    return None
        else:
            for j in range(1, len(arg)):         # -it, -itm64m, -p 80
                found = by_name.get("-" + arg[j])
                if found is None:
                    return None
                if found[0].kind == "flag":
                    values[found[0].dest] = found[1]
                    continue
                value = value_of(arg[j + 1:] or None)
                if value is None or not store(found[0], value):
                    return None
                break
        i += 1
    if i < len(args) and args[i] == "--help":
        return None
    return values, list(args[i:])


# ---------------------------------------------------------------- run / create

def daemon_options(opts: dict[str, Any], image: str, command: Sequence[str]
                   ) -> dict[str, Any]:
    """Flags -> the ``options`` of ``container.config``: the daemon builds and checks
    them (``flags.build_config``, the one model), so ``sbx`` does not import it; only
    ``-e``/``--env-file``, which read this machine, are resolved here."""
    from ..envfile import resolve_env
    security_opt = opts["security_opt"]
    if security_opt:                 # json and the profile reader only when asked
        from ..securityopt import read_security_opt
        security_opt = local(read_security_opt, security_opt)
    return {
        "image": image, "cmd": list(command) or None, "entrypoint": opts["entrypoint"],
        "env": local(resolve_env, opts["env_file"], opts["env"]),
        "workdir": opts["workdir"], "user": opts["user"], "hostname": opts["hostname"],
        "tty": opts["tty"], "open_stdin": opts["interactive"],
        "console_size": terminal_size() if opts["tty"] else [],
        "expose": opts["expose"], "stop_signal": opts["stop_signal"],
        "labels": local(read_label_files, opts["label_file"]) + list(opts["label"]),
        "stop_timeout": opts["stop_timeout"], "memory": opts["memory"],
        "memory_swap": opts["memory_swap"], "cpus": opts["cpus"],
        "cpu_quota": opts["cpu_quota"], "cpu_period": opts["cpu_period"],
        "cpu_shares": opts["cpu_shares"], "pids_limit": opts["pids_limit"],
        "ulimits": opts["ulimit"], "uts_mode": opts["uts"], "ipc_mode": opts["ipc"],
        "pid_mode": opts["pid"], "network_mode": opts["network"], "ip": opts["ip"],
        "links": opts["link"], "dns": opts["dns"], "dns_search": opts["dns_search"],
        "dns_opt": opts["dns_option"], "extra_hosts": opts["add_host"],
        "network_aliases": opts["network_alias"], "shm_size": opts["shm_size"],
        "ports": opts["publish"], "publish_all_ports": opts["publish_all"],
        "volumes": opts["volume"], "tmpfs": opts["tmpfs"], "mounts": opts["mount"],
        "volumes_from": opts["volumes_from"],
        "read_only": opts["read_only"], "init": opts["init"], "cap_add": opts["cap_add"],
        "cap_drop": opts["cap_drop"], "auto_remove": opts["auto_remove"],
        "security_opt": security_opt,
        "privileged": opts["privileged"],
        "timeout": opts["timeout"], "storage_opt": opts["storage_opt"],
        "log_driver": opts["log_driver"], "log_opts": opts["log_opt"],
        "restart": opts["restart"], "sysctls": opts["sysctl"], "group_add": opts["group_add"],
        "memory_reservation": opts["memory_reservation"],
        "oom_kill_disable": opts["oom_kill_disable"], "cpuset_cpus": opts["cpuset_cpus"],
        "devices": opts["device"], "health_cmd": opts["health_cmd"],
        "health_interval": opts["health_interval"], "health_timeout": opts["health_timeout"],
        "health_retries": opts["health_retries"],
        "health_start_period": opts["health_start_period"],
        "health_start_interval": opts["health_start_interval"],
        "no_healthcheck": opts["no_healthcheck"]}


def read_label_files(paths: Sequence[str]) -> list[str]:
    """``--label-file``: one ``key[=value]`` a line; blank lines and ``#`` comments
    skipped (Docker's format). Given ``--label``s come after: they win."""
    labels: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise InvalidArgument(f"label-file: {path}: {e.strerror}") from None
        labels += [line.strip() for line in lines
                   if line.strip() and not line.lstrip().startswith("#")]
    return labels


class CidFile:
    """``--cidfile``: refused when the file exists (Docker's check that no other
    container uses it), written once the id is known, removed when the create fails."""

    def __init__(self, path: str | None):
        self.path = path
        self.written = False
        if path:
            import os
            if os.path.exists(path):
                raise CliError(f"Container ID file found, make sure the other container "
                               f"isn't running or delete {path}", 125)

    def write(self, container_id: str) -> None:
        if self.path and not self.written:
            try:
                with open(self.path, "x") as f:
                    f.write(container_id)
            except OSError as e:
                raise CliError(f"failed to write the container ID to the file: "
                               f"{self.path}: {e.strerror}", 125) from None
            self.written = True


def pull_policy(conn: Connection, image: str, policy: str, platform: str | None) -> None:
    """``--pull``: ``missing`` is what create/run do anyway; ``always`` pulls first;
    ``never`` refuses an image that is not here."""
    if policy == "missing":
        return
    if policy == "never":
        from ..errors import NotFound
        try:
            conn.call("image.inspect", {"name": image})
        except NotFound:
            raise CliError(f"No such image: {image}", 125) from None
        return
    if policy != "always":
        raise CliError(f'invalid pull option: {policy!r}: must be one of "always", '
                       f'"missing" or "never"', 125)
    params: dict[str, Any] = {"name": image}
    if platform:
        params["platform"] = platform
    follow(conn.stream("image.pull", params), Progress(sys.stderr))


def container_config(conn: Connection, options: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` of ``container.create``/``run``, built from the flags by the daemon
    (``container.config``): a round trip costs ``sbx`` far less than importing the model
    (~50 ms)."""
    return conn.call("container.config", {"options": options})["config"]


class RefusedOptions:
    """The daemon refusing run/create's flags: Docker's wording, exit 125 and hint
    (a class, not contextlib: that import alone costs ~1 ms of every start)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, InvalidArgument):
            label = "Error response from daemon: " if exc.from_daemon else ""
            raise CliError(f"{label}{exc.message}", EXIT_DAEMON) from None
        return False


def run(host: str | None, image: str, command: Sequence[str], opts: dict[str, Any]
        ) -> int:
    """``sbx run``: create, start and attach (or ``-d``: print the id); the container's
    exit status."""
    detach = bool(opts["detach"])
    if not detach:
        check_tty(bool(opts["tty"]), bool(opts["interactive"]))
    options = daemon_options(opts, image, command)
    cidfile = CidFile(opts["cidfile"])
    with connection(host) as conn, RefusedOptions():
        config = container_config(conn, options)
        pull_policy(conn, image, opts["pull"], opts["platform"])
        params: dict[str, Any] = {
            "config": config,
            "stdin": bool(opts["interactive"]) and not detach,
            "remove": opts["auto_remove"], "detach": detach}
        for key in ("name", "platform", "detach_keys"):
            if opts[key] is not None:
                params[key] = opts[key]
        attachment = conn.stream("container.run", params)
        if detach:
            result = follow(attachment, Progress(
                sys.stderr, first=f"Unable to find image '{image}' locally"))
            cidfile.write(result["id"])
            print(result["id"])
            return 0
        result = pump(attachment, host=host, tty=bool(opts["tty"]),
                      stdin=bool(opts["interactive"]), sig_proxy=bool(opts["sig_proxy"]),
                      image=image, on_id=cidfile.write if opts["cidfile"] else None)
    if result.get("timed_out"):
        print(f"sbx: container {result.get('id', '')[:12]} timed out after "
              f"{opts['timeout']:g} seconds and was killed", file=sys.stderr)
    return int(result.get("exit_code", 0))


def create(host: str | None, image: str, command: Sequence[str], opts: dict[str, Any]
           ) -> int:
    """``sbx create``: print the new container's id."""
    options = daemon_options(opts, image, command)
    cidfile = CidFile(opts["cidfile"])
    with connection(host) as conn, RefusedOptions():
        params: dict[str, Any] = {"config": container_config(conn, options)}
        pull_policy(conn, image, opts["pull"], opts["platform"])
        for key in ("name", "platform"):
            if opts[key] is not None:
                params[key] = opts[key]
        container_id = conn.call("container.create", params)["id"]
        cidfile.write(container_id)
        print(container_id)
    return 0
