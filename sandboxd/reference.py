"""Image references (``busybox``, ``busybox:1.36``, ``localhost:5000/team/app:v2``,
``app@sha256:<hex>``), following the grammar of distribution's reference package.

References are kept as the user wrote them plus an implicit ``:latest``; no
``docker.io/library/`` is added, because there is no default registry here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?)"
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_NAME = 255


def split_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``(name, tag, digest)``; ``InvalidArgument`` naming what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("image reference: empty")
    name, _, digest = ref.partition("@")
    tag = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:                       # a ':' in the last component is the tag
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgument(f"image reference {ref!r}: invalid tag {tag!r} (letters, "
                                  f"digits, '_', '.', '-', at most 128, not starting with "
                                  f"'.' or '-')")
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise InvalidArgument(f"image reference {ref!r}: invalid name {name!r} (lowercase "
                              f"letters, digits and separators '.', '_', '-', '/')")
    if digest and not _DIGEST.match(digest):
        raise InvalidArgument(f"image reference {ref!r}: invalid digest {digest!r} "
                              f"(sha256:<64 hex>)")
    return name, tag, digest or None


def familiar(ref: str) -> str:
    """Docker's short form of a Docker Hub name (``docker.io/library/busybox:1`` ->
    ``busybox:1``, ``docker.io/team/app`` -> ``team/app``), normalised; other names
    are only normalised. Archives written by other tools carry the long form."""
    ref = normalize_ref(ref)
    for prefix in ("docker.io/", "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            rest = ref[len("library/"):]
            if ref.startswith("library/") and "/" not in rest.partition("@")[0]:
                ref = rest
            break
    return ref


def normalize_ref(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; tags and digests are kept."""
    name, tag, digest = split_ref(ref)
    if digest:
        return f"{name}:{tag}@{digest}" if tag else f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


@dataclass(frozen=True)
class Reference:
    """A reference split the way a registry needs it: ``domain`` (``host[:port]``, ``""``
    when the name has none), ``path`` (the repository inside the registry), and a ``tag``
    and/or ``digest``."""
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def reference(self) -> str:
        """What goes in ``/v2/<path>/manifests/<reference>``: the digest when there is
        one (it pins the content), else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(ref: str) -> Reference:
    """Docker's split: the first component is a registry when the name has more than one
    and it contains ``.``, ``:`` or an uppercase letter, or is ``localhost``
    (``localhost:5000/team/app:v2`` -> domain ``localhost:5000``, path ``team/app``).
    A name without a digest gets the tag ``latest``."""
    name, tag, digest = split_ref(ref)
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"
                  or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = "", name
    return Reference(domain, path, tag or (None if digest else "latest"), digest)
