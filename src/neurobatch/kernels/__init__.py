"""Pure NumPy/SciPy kernels, one operation per module; never imports dask."""
