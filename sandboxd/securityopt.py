"""``--security-opt`` as Docker takes it, read on the *caller's* side.

``seccomp=PROFILE.json`` names a file on the caller's machine: the client reads it and
sends its JSON (``seccomp={...}``, what ``docker inspect`` shows too), so the daemon
never opens a path a client names. Kept apart from :mod:`sandboxd.model` so ``sbx``
can resolve it before sending its options, without importing the model.
"""
from __future__ import annotations

import json

from . import untrusted_json
from .errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

KEYS = ("seccomp", "no-new-privileges")
# seccomp=<name> values that are not a file: Docker's "builtin" is the default profile.
PROFILE_NAMES = ("unconfined", "builtin", "default")


def split(entry: str) -> tuple[str, str]:
    """``key=value``, Docker's older ``key:value``, or a bare ``no-new-privileges``."""
    key, sep, value = entry.partition("=")
    if not sep:
        key, sep, value = entry.partition(":")
    return key.strip(), value


def read_security_opt(entries: Iterable[str]) -> list[str]:
    """The caller's options with each ``seccomp=FILE`` replaced by ``seccomp=<its JSON>``
    (compact). A file that cannot be read or is not JSON is an InvalidArgument."""
    out = []
    for entry in entries:
        key, value = split(str(entry))
        if key == "seccomp" and value not in PROFILE_NAMES and \
                not value.lstrip().startswith("{"):
            try:
                with open(value, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise InvalidArgument(f"opening seccomp profile ({value}) failed: "
                                      f"{e.strerror}") from None
            try:
                profile = untrusted_json.loads(text)
            except ValueError as e:
                raise InvalidArgument(f"seccomp profile {value}: not valid JSON ({e})"
                                      ) from None
            entry = "seccomp=" + json.dumps(profile, separators=(",", ":"))
        out.append(entry)
    return out


def check_security_opt(entries: Iterable[str], where: str = "host.security_opt"
                       ) -> list[str]:
    """Problems with already-read options (the daemon's side: a file name is refused)."""
    from .runner.spec import check_seccomp
    problems = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, str):
            problems.append(f"{at}: expected a string, got {type(entry).__name__}")
            continue
        key, value = split(entry)
        if key not in KEYS:
            problems.append(f"{at}: invalid --security-opt {entry!r} (supported: "
                            f"seccomp=unconfined|builtin|PROFILE.json, "
                            f"no-new-privileges[=true|false])")
        elif key == "no-new-privileges":
            if value.lower() not in ("", "true", "false"):
                problems.append(f"{at}: invalid --security-opt {entry!r}: "
                                f"no-new-privileges takes true or false")
        elif value in PROFILE_NAMES:
            continue
        elif not value.lstrip().startswith("{"):
            problems.append(f"{at}: seccomp={value}: the client reads a profile file and "
                            f"sends its JSON; this daemon does not open files a client "
                            f"names")
        else:
            problems += check_seccomp(value, f"{at} seccomp profile")
    return problems


def seccomp_profile(entries: Iterable[str], privileged: bool = False) -> str:
    """The runner's ``seccomp`` value: default, unconfined or a profile's JSON (the
    last ``seccomp=`` given wins; ``--privileged`` turns seccomp off, as in Docker)."""
    if privileged:
        return "unconfined"
    profile = "default"
    for entry in entries:
        key, value = split(entry)
        if key == "seccomp":
            profile = "default" if value in ("builtin", "default") else value
    return profile


def no_new_privileges(entries: Iterable[str]) -> bool:
    """On unless ``no-new-privileges=false`` (our default is containerd's: on)."""
    value = True
    for entry in entries:
        key, text = split(entry)
        if key == "no-new-privileges":
            value = text.lower() != "false"
    return value
