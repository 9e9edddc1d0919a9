"""Dask graphs over chunked arrays, and running them on a cluster."""
