"""Images: OCI documents (:mod:`.oci`), references (:mod:`.reference`), safe layer
unpacking (:mod:`.unpack`), the built-in host image (:mod:`.host`), builds
(:mod:`.build`, :mod:`.dockerfile`, :mod:`.context`) and the service that ties them to
the store and snapshotter (:class:`ImageService`).

``ImageService`` is imported on first use, so that a client importing a light module
(:mod:`.context`, :mod:`.reference`) does not load the daemon's side."""
from __future__ import annotations

from typing import Any

__all__ = ["ImageService"]


def __getattr__(name: str) -> Any:
    if name == "ImageService":
        from .service import ImageService
        return ImageService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
