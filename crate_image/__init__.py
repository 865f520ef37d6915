"""crate_image: pull OCI/Docker images into an OCI-layout store and turn them into bundles.

The front end calls crate_image.api (all keyword arguments optional; errors are
crate_image.errors.ImageError, whose str() is "problem; fix"):

    api.pull(reference, *, root=None, platform=None, progress=None, authfile=None,
             credentials=None, registries_conf=None) -> api.Image
        reference: docker grammar ("busybox", "host:5000/repo:tag", "repo@sha256:...");
        platform: "os/arch[/variant]" (default the host); progress: a crate_image.progress.Progress
        (progress.for_terminal() gives bars on a tty, lines otherwise; default silent).
    api.image(reference, *, root=None, extract=True) -> api.Image      # already in the store
    api.make_bundle(reference, bundle_dir, *, root=None, rootless=None, rootfs="auto",
                    args=None, entrypoint=None, env=None, user=None, workdir=None,
                    hostname="crate", terminal=False, network_namespace=None) -> api.Bundle
        config.json + rootfs/ for crate-runc. As root: rootfs is an overlay mount of the layers
        (rootfs="copy" for a flattened copy); rootless (not root, or rootless=True): a user
        namespace config mapping the caller's subordinate ids, rootfs a flattened copy.
    api.remove_bundle(bundle_dir, *, root=None)                          # unmount + delete
    api.images(*, root=None) -> [dict];  api.inspect(reference, *, root=None) -> dict
    api.remove(reference, *, root=None) -> str;  api.prune(*, root=None) -> dict
    api.unpack(reference, target, *, root=None) -> str                   # flattened rootfs
    api.login(registry, username, password, *, authfile=None) -> str;  api.logout(registry)

api.Image: name, digest (stored manifest), source_digest (the registry's), config_digest (the
image id), config (dict), manifest (dict), layer_dirs (extracted layers, lowest first: overlay
lower dirs), platform. api.Bundle: path, rootfs, mode ("overlay"/"copy"), rootless, config, image.

Modules, one concern each: reference (docker grammar), platform (host, --platform, index
selection), auth (credential files and helpers), config (store root, registries.toml), registry
(distribution v2 client), store (OCI layout, refs, prune), compression and tar (layer streams),
inroot (paths resolved inside a root), layer (safe extraction, whiteouts), pull (one-pass
parallel pull), bundle (image config -> runtime config, overlay), rootless (user namespace
helper), progress, api, cli.
"""
__version__ = "0.1.0"
