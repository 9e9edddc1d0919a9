"""Everything that touches bytes: fsspec discovery, loaders, Zarr stores, exports.

Importing it gives every S3 and HTTP(S) filesystem of this process timeouts and bounded
retries (:mod:`neurobatch.io.storage`).
"""

from neurobatch.io import storage

__all__ = ["storage"]
