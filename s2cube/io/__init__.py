"""Reading and storage: URLs and object stores, the chunk reader, the xarray backend, ``open_cube``."""
