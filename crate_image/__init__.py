"""crate_image: pull OCI/Docker images into an OCI-layout store and turn them into bundles."""
__version__ = "0.1.0"
