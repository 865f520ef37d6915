"""crate_runc: a runc-compatible OCI runtime."""
__version__ = "0.1.0"
