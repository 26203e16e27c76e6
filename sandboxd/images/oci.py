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
from datetime import datetime, timezone
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = MEDIA_LAYER + "+gzip"
MEDIA_LAYER_ZSTD = MEDIA_LAYER + "+zstd"

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
