"""crate: the docker-like front end over crate_image and any runc-compatible runtime."""
__version__ = "0.1.0"
