"""Images: OCI documents (:mod:`.oci`), safe layer unpacking (:mod:`.unpack`), the
built-in host image (:mod:`.host`), builds (:mod:`.build`, :mod:`.dockerfile`) and the
service that ties them to the store and snapshotter (:class:`ImageService`). The daemon's side: clients send a build context
with :mod:`sandboxd.buildcontext` and import nothing from here.

``ImageService`` is imported on first use, so that importing a light module
(:mod:`.oci`) does not load the whole service. References (``busybox:1.36``) are
:mod:`sandboxd.reference`, which the metadata store uses too."""
from __future__ import annotations

from typing import Any

__all__ = ["ImageService"]


def __getattr__(name: str) -> Any:
    if name == "ImageService":
        from .service import ImageService
        return ImageService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
