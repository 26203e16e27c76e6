"""Image references (``busybox``, ``busybox:1.36``, ``localhost:5000/team/app:v2``,
``app@sha256:<hex>``), following the grammar of distribution's reference package.

Names are kept in Docker's short ("familiar") form plus an implicit ``:latest``:
``docker.io/library/busybox`` and ``busybox`` are one name, stored and shown as
``busybox:latest``. Towards a registry (:func:`parse`) a name without a registry host is
Docker Hub's, ``docker.io``, and a one-component path is an official image under
``library/`` (``busybox`` -> ``docker.io/library/busybox``), as Docker resolves them.
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
DEFAULT_DOMAIN = "docker.io"                 # Docker Hub: where a short name comes from
HUB_ENDPOINT = "https://registry-1.docker.io"   # the registry that serves docker.io
_HUB_ALIASES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


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


def _short_name(name: str) -> str:
    """``docker.io/library/busybox`` -> ``busybox``; ``docker.io/team/app`` ->
    ``team/app``; other names unchanged."""
    for prefix in _HUB_ALIASES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            rest = name[len("library/"):]
            if name.startswith("library/") and "/" not in rest:
                name = rest
            break
    return name


def normalize_ref(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; ``docker.io/library/busybox:1`` ->
    ``busybox:1`` (the form names are stored and shown in); tags and digests kept."""
    name, tag, digest = split_ref(ref)
    name = _short_name(name)
    if digest:
        return f"{name}:{tag}@{digest}" if tag else f"{name}@{digest}"
    return f"{name}:{tag or 'latest'}"


@dataclass(frozen=True)
class Reference:
    """A reference split the way a registry needs it: ``domain`` (``host[:port]``;
    ``docker.io`` for Docker Hub), ``path`` (the repository inside the registry), and a
    ``tag`` and/or ``digest``."""
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """The name as it is stored and shown (``busybox``, ``team/app``)."""
        return _short_name(self.name)

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
    (``localhost:5000/team/app:v2`` -> domain ``localhost:5000``, path ``team/app``);
    otherwise the name is Docker Hub's (``docker.io``), an official image under
    ``library/`` when it has one component (``busybox`` -> ``library/busybox``).
    ``index.docker.io`` is ``docker.io``. A name without a digest gets the tag
    ``latest``."""
    name, tag, digest = split_ref(ref)
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"
                  or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in ("index.docker.io", "registry-1.docker.io"):
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return Reference(domain, path, tag or (None if digest else "latest"), digest)
