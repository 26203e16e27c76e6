"""OCI image-spec documents: media types, chain ids, image configs and manifests.

An image is a config (architecture, os, runtime defaults, ``rootfs.diff_ids``) plus a
manifest that names the config and the layer blobs. The image id is the config's
digest, as in Docker. Documents are serialised canonically (sorted keys, no spaces) so
that the same content always has the same digest.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
from datetime import datetime, timezone
from typing import Any

from ..errors import InvalidArgument

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = MEDIA_LAYER + "+gzip"
MEDIA_LAYER_ZSTD = MEDIA_LAYER + "+zstd"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
# Docker's own names for the same documents (image manifest v2, schema 2).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Layers whose content is not in the registry but at URLs of their own (Windows base
# images): Docker's foreign layers, OCI's non-distributable ones.
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MANIFESTS = frozenset((MEDIA_MANIFEST, DOCKER_MANIFEST))
INDEXES = frozenset((MEDIA_INDEX, DOCKER_MANIFEST_LIST))
# Annotations naming an image in an OCI layout's index.json.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def architecture() -> str:
    """This machine's architecture in OCI/Go terms (``amd64`` on x86_64)."""
    machine = platform.machine().lower()
    return _ARCH.get(machine, machine)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> float | None:
    """Unix time of an RFC 3339 timestamp as Go writes them (nanoseconds, ``Z``);
    ``None`` when it is missing or unreadable."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$",
                 value or "")
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]            # datetime keeps microseconds at most
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone).timestamp()


def media_type(doc: dict[str, Any]) -> str:
    """A manifest's or index's media type: its ``mediaType`` field, else guessed from
    its shape (the field is optional in OCI documents)."""
    if doc.get("mediaType"):
        return doc["mediaType"]
    return MEDIA_INDEX if "manifests" in doc else MEDIA_MANIFEST


def parse_platform(text: str) -> tuple[str, str, str]:
    """``os[/arch[/variant]]`` or ``arch`` (Docker's ``--platform``) -> ``(os, arch,
    variant)``, with the architecture in OCI terms (``x86_64`` -> ``amd64``); ``""``
    parts are left to this machine's (``linux``, :func:`architecture`)."""
    parts = text.strip().lower().split("/") if isinstance(text, str) else []
    if not parts or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts) \
            or len(parts) > 3:
        raise InvalidArgument(f"platform {text!r}: expected os[/arch[/variant]], e.g. "
                              f"linux/amd64 or linux/arm64/v8")
    if len(parts) == 1 and parts[0] != "linux":
        parts = ["linux", parts[0]]                  # "arm64": Docker reads an arch
    os_name, arch, variant = (parts + ["", ""])[:3]
    if os_name != "linux":
        raise InvalidArgument(f"platform {text!r}: only linux images run here "
                              f"(operating system {os_name!r})")
    arch = _ARCH.get(arch, arch) if arch else architecture()
    return os_name, arch, variant


def platform_name(os_name: str, arch: str, variant: str = "") -> str:
    return "/".join(p for p in (os_name, arch, variant) if p)


def pick_platform(index: dict[str, Any], arch: str | None = None,
                  os_name: str = "linux", variant: str = "") -> dict[str, Any] | None:
    """The descriptor of an index for ``os_name``/``arch`` (default: this machine's)
    and ``variant`` when one is asked for; without one, an entry without a variant
    first, since a variant such as ``amd64/v3`` needs CPU features this machine may
    lack. ``None`` when there is none."""
    arch = arch or architecture()
    found = [d for d in index.get("manifests") or []
             if d.get("mediaType", MEDIA_MANIFEST) in MANIFESTS
             and (d.get("platform") or {}).get("os") == os_name
             and (d.get("platform") or {}).get("architecture") == arch
             and (not variant or (d.get("platform") or {}).get("variant") == variant)]
    found.sort(key=lambda d: (d["platform"].get("variant") or "~"), reverse=True)
    return found[0] if found else None


def index_platforms(index: dict[str, Any]) -> list[str]:
    """The platforms of an index's image entries (``linux/amd64``, ``linux/arm/v7``),
    in its order; attestation entries (``unknown/unknown``) left out."""
    out = []
    for d in index.get("manifests") or []:
        p = d.get("platform") if isinstance(d, dict) else None
        if isinstance(p, dict) and p.get("os") not in (None, "unknown"):
            out.append(platform_name(str(p.get("os")), str(p.get("architecture", "")),
                                     str(p.get("variant") or "")))
    return list(dict.fromkeys(out))


def check_manifest(doc: Any, what: str) -> dict[str, Any]:
    """``doc`` if it is an image manifest this can use (a config descriptor and layer
    descriptors of tar media types, each with a sha256 digest and a size), else
    ``InvalidArgument`` naming ``what`` and the problem."""
    def descriptor(d: Any, where: str) -> None:
        if not isinstance(d, dict) or not isinstance(d.get("size"), int) \
                or not re.fullmatch(r"sha256:[0-9a-f]{64}", str(d.get("digest"))):
            raise InvalidArgument(f"{what}: manifest {where} is not a descriptor with a "
                                  f"sha256 digest and a size")
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: the manifest is not a JSON object")
    descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{what}: the manifest has no layers list")
    for i, layer in enumerate(layers):
        descriptor(layer, f"layer {i}")
        kind = layer.get("mediaType", MEDIA_LAYER)
        if kind == DOCKER_LAYER_FOREIGN or kind.startswith(NONDISTRIBUTABLE):
            where = ", ".join(layer.get("urls") or []) or "URLs the manifest names"
            raise InvalidArgument(f"{what}: layer {i} ({layer['digest']}) is a foreign, "
                                  f"non-distributable layer ({kind}): its content is not "
                                  f"in the registry but at {where} (Windows base images "
                                  f"are made so); only distributable layers are pulled "
                                  f"here")
        if ".tar" not in kind:
            raise InvalidArgument(f"{what}: layer {i} has media type {kind!r}, not a "
                                  f"filesystem layer (tar); this is not a container image")
    return doc


# The runtime config's fields a container reads, with the JSON types Docker's Go structs
# give them (an image's config from a registry or an archive is untrusted input).
_STRINGS = ("WorkingDir", "User", "StopSignal")
_STRING_LISTS = ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild")
_MAPS = ("ExposedPorts", "Volumes", "Labels")
_HEALTH_NUMBERS = ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")


def runtime_problems(runtime: Any) -> list[str]:
    """What in an image config's ``config`` (its runtime defaults) has the wrong type, as
    ``config.<Field>: ...``; [] when it is usable (missing fields and null are)."""
    if runtime is None:
        return []
    if not isinstance(runtime, dict):
        return [f"config: expected an object, got {type(runtime).__name__}"]
    problems = []

    def wrong(field: str, expected: str) -> None:
        problems.append(f"config.{field}: expected {expected}, got "
                        f"{json.dumps(runtime[field])[:40]}")

    for field in _STRINGS:
        if runtime.get(field) is not None and not isinstance(runtime[field], str):
            wrong(field, "a string")
    for field in _STRING_LISTS:
        value = runtime.get(field)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            wrong(field, "a list of strings")
    for field in _MAPS:
        value = runtime.get(field)
        if value is not None and not isinstance(value, dict):
            wrong(field, "an object")
        elif field == "Labels" and value and \
                not all(isinstance(v, str) for v in value.values()):
            wrong(field, "an object of strings")
    health = runtime.get("Healthcheck")
    if health is not None:
        test = health.get("Test") if isinstance(health, dict) else None
        if not isinstance(health, dict) or not (
                test is None or isinstance(test, list) and all(isinstance(t, str)
                                                               for t in test)) or \
                any(not isinstance(health.get(k, 0), int) or isinstance(health.get(k), bool)
                    for k in _HEALTH_NUMBERS):
            wrong("Healthcheck", "{Test: [strings], Interval, Timeout, StartPeriod, "
                                 "StartInterval (ns), Retries: integers}")
    return problems


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def chain_id(parent: str | None, diff_id: str) -> str:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(chain_id(out[-1] if out else None, d))
    return out


def image_config(diff_ids: list[str], *, created: str, env: list[str],
                 cmd: list[str] | None, history: list[dict[str, Any]],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OCI image config; ``extra`` adds runtime defaults (WorkingDir, User, ...)."""
    return {
        "created": created,
        "architecture": architecture(),
        "os": "linux",
        "config": {"Env": env, "Cmd": cmd, **(extra or {})},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history,
    }


def manifest(config_digest: str, config_size: int,
             layers: list[tuple[str, str, int]]) -> dict[str, Any]:
    """An OCI manifest; ``layers`` are ``(media type, digest, size)``, bottom first."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": m, "digest": d, "size": s} for m, d, s in layers],
    }
