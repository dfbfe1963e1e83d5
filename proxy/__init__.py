"""stream-proxy: stream large files between HTTP clients and object storage."""

__version__ = "0.1.0"
