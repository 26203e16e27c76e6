"""What a Dockerfile's config instructions (ENV, LABEL, WORKDIR, USER, EXPOSE, CMD,
ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK, VOLUME) do to an image's runtime config (the
OCI config's ``config``): the builder's config steps, and ``docker commit``/``import``'s
``--change``, which take the same instructions one per change."""
from __future__ import annotations

import copy
import json
import posixpath
import re
from typing import Any, Callable, Sequence

from ..errors import InvalidArgument
from ..model import ContainerConfig
from ..validate import exposed_ports
from . import dockerfile as df

# what a config step does to the runtime config (it may change the dict it is given)
Change = Callable[[dict[str, Any]], dict[str, Any]]
DEFAULT_SHELL = ["/bin/sh", "-c"]
# What docker commit/import --change take (moby's validCommitCommands; ONBUILD is not
# supported by this builder either).
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER",
                       "VOLUME", "WORKDIR")


def config_step(ins: df.Instruction, runtime: dict[str, Any], shell: list[str],
                env: dict[str, str], escape: str, cmd_set: bool) -> tuple[str, Change]:
    """The history text and the change of a config instruction, its variables expanded
    from ``env``; ``runtime`` is the config before it (a relative WORKDIR), ``shell`` what
    a CMD or ENTRYPOINT in shell form runs under, ``cmd_set`` whether a CMD came before
    in this stage (an ENTRYPOINT then keeps it)."""
    k = ins.keyword
    text = str(ins)
    if k in ("ENV", "LABEL"):
        pairs = df.assignments(ins, env, escape)
        text = f"{k} " + " ".join(f"{key}={json.dumps(v) if ' ' in v or not v else v}"
                                  for key, v in pairs)
        if k == "ENV":
            def change(rt: dict[str, Any]) -> dict[str, Any]:
                current = {e.partition("=")[0]: e for e in rt.get("Env") or []}
                current.update({key: f"{key}={v}" for key, v in pairs})
                rt["Env"] = list(current.values())
                return rt
        else:
            change = _merging("Labels", dict(pairs))
    elif k == "MAINTAINER":
        change = _setting()                   # the author lives outside config
    elif k == "WORKDIR":
        path = df.expand(ins.text, env, escape)
        path = posixpath.normpath(posixpath.join(rt_workdir(runtime), path))
        text = f"WORKDIR {path}"
        change = _setting(WorkingDir=path)
    elif k in ("USER", "STOPSIGNAL"):            # one word, variables expanded
        value = df.expand(ins.text, env, escape)
        text = f"{k} {value}"
        change = _setting(**{"User" if k == "USER" else "StopSignal": value})
    elif k == "EXPOSE":
        keys_all: list[str] = []          # a range is one key per port, as Docker's
        ports = []
        for port in df.words(ins.text, env, escape):
            keys = exposed_ports(port)
            if keys is None:
                raise InvalidArgument(f"line {ins.line}: EXPOSE {port}: not PORT[-END]"
                                      f"[/tcp|udp|sctp] with ports in 1..65535")
            ports.append(port if "/" in port else f"{port}/tcp")
            keys_all.extend(keys)
        text = "EXPOSE " + " ".join(ports)
        change = _merging("ExposedPorts", {key: {} for key in keys_all})
    elif k in ("CMD", "ENTRYPOINT"):
        argv = df.command(ins, shell) if ins.text else []
        text = f"{k} {json.dumps(argv)}"
        if k == "CMD":
            change = _setting(Cmd=argv or None)
        elif cmd_set:
            change = _setting(Entrypoint=argv or None)
        else:                                 # Docker: it resets the base image's CMD
            change = _setting(Entrypoint=argv or None, Cmd=None)
    elif k == "SHELL":
        new_shell = df.exec_form(ins.text)
        if not new_shell:
            raise InvalidArgument(f"line {ins.line}: SHELL takes a JSON array, e.g. "
                                  f'SHELL ["/bin/bash", "-c"]')
        text = f"SHELL {json.dumps(new_shell)}"
        change = _setting(Shell=new_shell)
    elif k == "HEALTHCHECK":
        doc = df.healthcheck(ins)
        text = f"HEALTHCHECK {json.dumps(doc, sort_keys=True)}"
        change = _setting(Healthcheck=doc)
    elif k == "VOLUME":
        paths = df.exec_form(ins.text) or df.words(ins.text, env, escape)
        text = "VOLUME " + json.dumps(paths)
        change = _merging("Volumes", {p: {} for p in paths})
    else:                                      # the parser admits nothing else
        raise InvalidArgument(f"line {ins.line}: {k} is not supported")
    return text, change


def apply_changes(runtime: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """``docker commit``/``import --change``: each change one instruction of
    :data:`CHANGE_INSTRUCTIONS` (``CMD ["sh"]``, ``ENV A=1 B=2``, ``EXPOSE 80``), applied in
    order to a copy of ``runtime``, variables expanded from its ``Env``; every problem is
    reported at once."""
    runtime = copy.deepcopy(runtime)
    problems: list[str] = []
    cmd_set = False
    for change in changes:
        if not change.strip():
            continue                                   # as Docker: nothing to do
        keyword = change.strip().split(None, 1)[0].upper()
        if keyword not in CHANGE_INSTRUCTIONS:
            problems.append(f"change {change!r:.80}: {keyword} is not an instruction a "
                            f"change takes ({', '.join(CHANGE_INSTRUCTIONS)})")
            continue
        try:
            stage = df.parse(f"FROM scratch\n{change}", name="change").stages[0]
            if len(stage.instructions) != 1:
                raise InvalidArgument(f"one instruction per change, got "
                                      f"{len(stage.instructions)}")
            env = {e.partition("=")[0]: e.partition("=")[2] for e in runtime.get("Env") or []}
            _, step = config_step(stage.instructions[0], runtime,
                                  list(runtime.get("Shell") or DEFAULT_SHELL), env, "\\",
                                  cmd_set)
        except InvalidArgument as e:
            for message in e.details.get("problems") or [e.message]:   # not "line 2:"
                problems.append(f"change {change!r:.80}: "
                                f"{re.sub(r'^(line |change:)[0-9]+: ', '', message)}")
            continue
        runtime = step(runtime)
        cmd_set = cmd_set or keyword == "CMD"
    if problems:
        raise InvalidArgument.of(problems)
    return runtime


def container_runtime(image: dict[str, Any], config: ContainerConfig) -> dict[str, Any]:
    """``docker commit``'s config: the image's, with what the container ran with over it
    (its command, entrypoint, environment, working directory, user, ports, labels, stop
    signal and health check; a container's config already holds the image's under its
    own)."""
    runtime = copy.deepcopy(image)
    runtime.update({
        "Cmd": list(config.cmd) or None, "Entrypoint": list(config.entrypoint or ()) or None,
        "Env": list(config.env), "WorkingDir": config.workdir, "User": config.user,
        "ExposedPorts": {p: {} for p in config.exposed_ports} or None,
        "Labels": config.labels_dict() or None})
    if config.stop_signal != "SIGTERM" or "StopSignal" in image:
        runtime["StopSignal"] = config.stop_signal
    if config.healthcheck.test:
        from ..health import to_image
        runtime["Healthcheck"] = to_image(config.healthcheck)
    return {k: v for k, v in runtime.items() if v not in (None, "", {}) or k in image}


def _setting(**fields: Any) -> Change:
    """A config step's change to the runtime config: ``fields`` set as given."""
    def change(rt: dict[str, Any]) -> dict[str, Any]:
        rt.update(fields)
        return rt
    return change


def _merging(key: str, entries: dict[str, Any]) -> Change:
    """A config step's change to the runtime config: ``entries`` added to the mapping
    at ``key`` (LABEL, EXPOSE, VOLUME add to what earlier steps and the base set)."""
    def change(rt: dict[str, Any]) -> dict[str, Any]:
        rt[key] = {**(rt.get(key) or {}), **entries}
        return rt
    return change


def rt_workdir(runtime: dict[str, Any]) -> str:
    return runtime.get("WorkingDir") or "/"
