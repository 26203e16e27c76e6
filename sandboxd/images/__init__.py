"""Images: OCI documents (:mod:`.oci`), references (:mod:`.reference`), safe layer
unpacking (:mod:`.unpack`), the built-in host image (:mod:`.host`) and the service that
ties them to the store and snapshotter (:class:`ImageService`)."""
from .service import ImageService

__all__ = ["ImageService"]
