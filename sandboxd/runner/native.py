"""A cold start's set-up in C: which starts take it, and the steps sbx-setup is given.

The fork server's own path forks its Python interpreter and runs the set-up there
(forkserver._container_first): each start then pays for copying the pages that Python
touches in a 15 MiB address space (~2 ms of copy-on-write faults here, in the child and
in the server), for ~250 system calls with Python between them, and for the exec's
teardown of that address space. ``sbx-setup`` (setup.c) is a small static program the
server spawns without copying itself (posix_spawn), given the same decisions as a list
of steps: :func:`encode` turns the plan (plan.build_plan) and the spec's process into
them, and :func:`decode_failure` words a failed step exactly as the Python path words it.

What takes this path: a plain start (with a pty or not) or a prepared (pool) container
that waits in sbx-park (no init, hold, zygote or template entry), its pid namespace
private or the host's, no_new_privileges on (the filter loads last, just before the
exec, or at park); an exec's process on the same terms. The user, its groups and
--group-add are looked up in the image's /etc/passwd and /etc/group by sbx-setup, as
security.resolve_user does. Anything else, or a host where sbx-setup could not be built, takes the Python
path; both end in the same container (tests/integration/test_native_setup.py compares
them).

The helper is built and loaded as sbx-park is (park.build_helper, park.load_helper).
"""
from __future__ import annotations

import enum
import functools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self
from pathlib import Path

from ..errors import InvalidArgument, SandboxError, SetupFailed
from . import rlimits, security
from . import syscalls as sc
from .park import decode_failure as decode_command_failure
from .plan import (AttachMount, MakeDevice, MakeDirs, MakeLink, MaskPath, MountStep, PivotRoot,
                   ReadonlyPath, SetHostname, Step, WriteFile)
from .spec import DEFAULT_PATH, ContainerSpec, Process

SOURCE = Path(__file__).with_name("setup.c")
MAGIC = 0x70757473                           # setup.c's SETUP_MAGIC
NS_FLAGS = {"net": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS}
# An exec's setns order (here and in forkserver._exec_c1): the mount namespace last,
# since entering it changes root and cwd.
EXEC_NAMESPACES = ("ipc", "uts", "net", "pid", "cgroup", "mnt")
_FAILURE = struct.Struct("=ciI")             # after "X": kind, errno, step index
# setup.c's fail_kind kinds, which name a step; the others are helper.h's (park's words).
STEP_KINDS = (b"o", b"l", b"d", b"L", b"u", b"g", b"a", b"U")

# Python's RLIM_INFINITY is -1; sbx-setup takes the kernel's rlim_t (2**64 - 1).
_RLIM64 = (1 << 64) - 1


class Op(enum.IntEnum):
    """setup.c's step codes."""
    JOIN = 1
    CLONE = 2
    UNSHARE = 3
    SETNS = 4
    SYSCTL = 5
    MOUNT = 6
    ATTACH = 7
    MKDIRS = 8
    MKNOD = 9
    SYMLINK = 10
    WRITE = 11
    MASK = 12
    READONLY = 13
    PIVOT = 14
    HOSTNAME = 15
    STDIO = 16
    RLIMIT = 17
    WORKDIR = 18
    PROFILE = 19
    CHDIR = 20
    EXEC = 21
    PARK = 22
    ENTER = 23
    FORK = 24


# What a failed step becomes: (errno, kind, detail) -> the error the Python path raises.
Failure = Callable[[int, bytes, str], SandboxError]


def eligible(spec: ContainerSpec, clone_flags: int | None, entry_files: Sequence[str]) -> bool:
    """Whether ``spec``'s start can be set up by sbx-setup (see the module's text)."""
    return (clone_flags is not None and not spec.init and not spec.hold and not spec.zygote
            and not spec.entry and eligible_process(spec.process, entry_files))


def eligible_process(process: Process, entry_files: Sequence[str]) -> bool:
    """Whether ``process`` (a start's, or an exec's into a running container) can be set
    up by sbx-setup: no_new_privileges on (the filter loads last), known rlimits, and
    a cgroup joined by writing ``entry_files``."""
    return (bool(entry_files) and process.no_new_privileges
            and all(u.name in rlimits.RLIMITS for u in process.ulimits))


class _Operands:
    """Encoded values, in setup.c's order: u32, u64, and strings (length, bytes, NUL)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, *values: int) -> Self:
        self.parts.append(struct.pack(f"={len(values)}I", *values))
        return self

    def u64(self, *values: int) -> Self:
        self.parts.append(struct.pack(f"={len(values)}Q", *values))
        return self

    def bytes(self, data: bytes) -> Self:
        self.parts += [struct.pack("=I", len(data)), data]
        return self

    def str(self, *texts: str | None) -> Self:
        for text in texts:
            self.bytes(os.fsencode(text or "") + b"\0")
        return self


class _Encoder(_Operands):
    """The steps: each a code, the index of its failure, its operands."""

    def __init__(self) -> None:
        super().__init__()
        self.parts.append(struct.pack("=I", MAGIC))
        self.failures: list[Failure] = []

    def step(self, op: Op, failure: Failure) -> _Encoder:
        self.parts.append(struct.pack("=II", op, len(self.failures)))
        self.failures.append(failure)
        return self

    def plan_step(self, step: Step) -> _Encoder:
        op, operands, failure = _plan_step(step)
        self.step(op, failure).parts.append(operands)
        return self


def _setup_failed(message: str, step: str, **details: object) -> Failure:
    def failure(err: int, kind: bytes, detail: str) -> SandboxError:
        return SetupFailed(f"{message}: {detail or os.strerror(err)}",
                           {"step": step, "errno": err, **details})
    return failure


def _profile_failure(user: str) -> Failure:
    """security.apply_profile's words: a user or group the image does not have, or a
    failed call."""
    def failure(err: int, kind: bytes, detail: str) -> SandboxError:
        if kind == b"u":
            return InvalidArgument(f"user: no user {detail!r} in the image's /etc/passwd")
        if kind == b"g":
            return InvalidArgument(f"user: no group {detail!r} in the image's /etc/group")
        if kind == b"a":
            return InvalidArgument(f"group-add: no group {detail!r} in the image's "
                                   f"/etc/group")
        reason = (f"the image's {detail} has a uid or gid that is not a number"
                  if kind == b"U" else os.strerror(err))
        return SetupFailed(f"apply security profile (user {user or 'root'}): {reason}",
                           {"step": "security", "errno": err})
    return failure


def _step_failure(step: Step) -> Failure:
    """mounts.run_steps's words for a failed step (and _mount's for a plain target)."""
    what = step.describe()

    def failure(err: int, kind: bytes, detail: str) -> SandboxError:
        if kind == b"l":
            return SetupFailed(f"{what}: the image's {step.target} is a symlink (to "  # type: ignore[union-attr]
                               f"{detail}); refusing to mount through it",
                               {"step": what, "errno": 40})
        if kind == b"d":
            return SetupFailed(f"{what}: the image's {step.target} is not a directory",  # type: ignore[union-attr]
                               {"step": what, "errno": 20})
        reason = f"too many levels of symbolic links in {detail}" if kind == b"L" \
            else detail or os.strerror(err)
        return SetupFailed(f"{what}: {reason}", {"step": what, "errno": err})
    return failure


@dataclass(frozen=True)
class Park:
    """A prepared container's end (forkserver._park): sbx-park's memfd, the channel its
    take comes on, and whether the filter is loaded at park (else at the take)."""
    helper: int
    channel: int
    filter_at_park: bool


def encode(spec: ContainerSpec, plan: Sequence[Step], entry_files: Sequence[str],
           clone_flags: int, bpf: bytes, bpf_flags: int, stdio: Sequence[int] = (),
           park: Park | None = None) -> tuple[bytes, list[Failure]]:
    """sbx-setup's steps for ``spec`` and the ``plan`` built for it, with the failure of
    each step as the Python path words it: a spawn's (with its ``stdio``) ends in the
    exec, a prepared container's in sbx-park (``park``)."""
    root = next(s.root for s in plan if isinstance(s, PivotRoot))
    e = _Encoder()
    e.str(root)
    for path in entry_files:
        e.step(Op.JOIN, _setup_failed(f"write 0 to {path}", "cgroup", path=path)).str(path)
    namespaces = _setup_failed("create namespaces", "namespaces")
    e.step(Op.CLONE, namespaces).u64(clone_flags)
    flags = sc.CLONE_NEWCGROUP     # after the join: its root is the container's cgroup
    for name, flag in NS_FLAGS.items():
        mode = getattr(spec.namespaces, name)
        if mode == "private":
            flags |= flag
        elif mode != "host":
            e.step(Op.SETNS, namespaces).str(mode).u32(flag)
    e.step(Op.UNSHARE, namespaces).u64(flags)
    for entry in spec.sysctls:
        key, _, value = entry.partition("=")
        e.step(Op.SYSCTL, _setup_failed(f"sysctl {key}={value}", "sysctl")) \
            .str("/proc/sys/" + key.replace(".", "/"), value)
    for step in plan:
        e.plan_step(step)
    return _encode_process(e, spec.process, spec.hostname, bpf, bpf_flags, stdio, park)


def encode_exec(target_pid: int, process: Process, hostname: str,
                entry_files: Sequence[str], bpf: bytes, bpf_flags: int,
                stdio: Sequence[int]) -> tuple[bytes, list[Failure]]:
    """sbx-setup's steps for an exec of ``process`` into the running container whose
    pid 1 is ``target_pid`` (forkserver._exec_c1): its C1 joins the cgroup and the
    namespaces and forks the process, which sets itself up as a start's does."""
    e = _Encoder()
    e.str("/")                                  # no plan: the root is the container's
    for path in entry_files:
        e.step(Op.JOIN, _setup_failed(f"write 0 to {path}", "cgroup", path=path)).str(path)
    enter = _setup_failed("enter the container's namespaces", "setns")
    e.step(Op.ENTER, enter).u32(len(EXEC_NAMESPACES)) \
        .str(*(f"/proc/{target_pid}/ns/{ns}" for ns in EXEC_NAMESPACES))
    e.step(Op.FORK, enter)
    return _encode_process(e, process, hostname, bpf, bpf_flags, stdio, None)


def _encode_process(e: _Encoder, process: Process, hostname: str, bpf: bytes,
                    bpf_flags: int, stdio: Sequence[int], park: Park | None
                    ) -> tuple[bytes, list[Failure]]:
    """The process's own set-up, after the namespaces and the root: stdio, rlimits,
    workdir, capabilities, chdir, then the exec (or sbx-park)."""
    if park is None:                            # 3 fds, or 1 console socket with a pty
        fds = [fd & 0xFFFFFFFF for fd in (*stdio, -1, -1)[:3]]   # -1 as setup.c reads it
        # Never called: helper.h's install_stdio reports its failures as sbx-park's 's'
        # ("stdio: ...", "pty: ..."), which name no step.
        e.step(Op.STDIO, _setup_failed("container setup: OSError", "setup")) \
            .u32(int(process.terminal), *fds, *(process.console_size or (0, 0)))
    for u in process.ulimits:
        soft, hard = rlimits.to_rlim(u.soft), rlimits.to_rlim(u.hard)
        e.step(Op.RLIMIT, _setup_failed(
            f"setrlimit {u.name} {rlimits.show(soft)}:{rlimits.show(hard)}", "rlimit",
            name=u.name)).u32(rlimits.RLIMITS[u.name]).u64(soft & _RLIM64, hard & _RLIM64)
    e.step(Op.WORKDIR, _setup_failed(f"prepare workdir {process.cwd}", "workdir")) \
        .str(process.cwd)
    keep = security.capability_mask(process.capabilities) & security.RUNNER_CAPS
    e.step(Op.PROFILE, _profile_failure(process.user)) \
        .u64(keep).u32(security.LAST_CAP, int(process.no_new_privileges)) \
        .str(process.user).u32(len(process.groups)).str(*process.groups)
    e.step(Op.CHDIR, _setup_failed(f"chdir to {process.cwd}", "chdir")).str(process.cwd)
    if park is not None:
        e.step(Op.PARK, _setup_failed("exec the parked pid 1 (sbx-park)", "park")) \
            .u32(park.channel, park.helper).str(hostname).u32(bpf_flags) \
            .bytes(bpf if park.filter_at_park else b"")
        return b"".join(e.parts), e.failures
    env = _environment(process, hostname)
    keys = [entry.partition("=")[0] for entry in env]
    path = dict(entry.partition("=")[::2] for entry in env).get("PATH", DEFAULT_PATH)
    # HOSTNAME and HOME as child.environment makes them, unless the process sets them:
    # the uts namespace's name (when the spec names none) and uid 0's home in the image.
    host_at = keys.index("HOSTNAME") if not hostname and _unset(process.env, "HOSTNAME") \
        else 0xFFFFFFFF
    home_at = keys.index("HOME") if _unset(process.env, "HOME") else 0xFFFFFFFF
    e.step(Op.EXEC, _setup_failed("install the seccomp filter", "seccomp")) \
        .u32(len(process.args), len(env), host_at, home_at).str(path).u32(bpf_flags) \
        .bytes(bpf).str(*process.args, *env)
    return b"".join(e.parts), e.failures


def _unset(entries: Sequence[str], key: str) -> bool:
    return not any(entry.partition("=")[0] == key for entry in entries)


def _environment(process: Process, hostname: str) -> list[str]:
    """child.environment's result as entries, in its order; HOSTNAME and HOME hold
    placeholders sbx-setup fills when the process does not set them."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": ""}
    if process.terminal:
        env["TERM"] = "xterm"
    for entry in process.env:
        key, _, value = entry.partition("=")
        env[key] = value
    return [f"{key}={value}" for key, value in env.items()]


@functools.lru_cache(maxsize=512)
def _plan_step(step: Step) -> tuple[Op, bytes, Failure]:
    """A plan step's code, encoded operands and failure: most steps are the same for
    every start (plan.py caches them), so each is encoded once."""
    b = _Operands()
    if isinstance(step, MountStep):
        op = Op.MOUNT
        b.str(step.target, step.fstype, step.source, step.data, step.create, step.chdir) \
            .u64(step.flags).u32(int(step.in_root), int(step.plain_target))
    elif isinstance(step, AttachMount):
        op = Op.ATTACH
        b.u32(step.fd).str(step.target).u32(int(step.in_root))
    elif isinstance(step, MakeDirs):
        op = Op.MKDIRS
        b.str(step.path).u32(step.mode, int(step.in_root))
    elif isinstance(step, MakeDevice):
        op = Op.MKNOD
        b.str(step.path).u32(step.major, step.minor)
    elif isinstance(step, MakeLink):
        op = Op.SYMLINK
        b.str(step.path, step.target)
    elif isinstance(step, WriteFile):
        op = Op.WRITE
        b.str(step.path).bytes(step.content.encode())
    elif isinstance(step, MaskPath):
        op = Op.MASK
        b.str(step.path)
    elif isinstance(step, ReadonlyPath):
        op = Op.READONLY
        b.str(step.path)
    elif isinstance(step, PivotRoot):
        op = Op.PIVOT
    elif isinstance(step, SetHostname):
        op = Op.HOSTNAME
        b.str(step.name)
    else:                                           # a new step type must be taught here
        raise TypeError(f"sbx-setup: no encoding for {type(step).__name__}")
    return op, b"".join(b.parts), _step_failure(step)


def decode_failure(raw: bytes, failures: Sequence[Failure]) -> SandboxError:
    """The error of sbx-setup's ``X`` report: a step's as the Python path words it, or
    the command's (not found, not executable) as sbx-park's."""
    kind = raw[1:2]
    if kind not in STEP_KINDS:
        return decode_command_failure(raw)
    _, err, index = _FAILURE.unpack_from(raw, 1)
    detail = raw[1 + _FAILURE.size:].decode("utf-8", "replace")
    if index >= len(failures):
        return SetupFailed(f"container setup (sbx-setup): {detail or os.strerror(err)}",
                           {"step": "setup", "errno": err})
    return failures[index](err, kind, detail)
