"""Everything that touches bytes: fsspec discovery, loaders, Zarr stores, exports."""
