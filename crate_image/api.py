"""The Python API the front end (`crate`) calls; the CLI is a thin layer over it.

    from crate_image import api
    image = api.pull("busybox")                          # -> api.Image (stored, layers extracted)
    b = api.make_bundle("busybox", "/run/c1/bundle")     # config.json + rootfs for crate-runc
    ...                                                  # crate-runc run --bundle b.path c1
    api.remove_bundle(b.path)

Every function takes `root=` (the store root; default $CRATE_ROOT, /var/lib/crate as root,
~/.local/share/crate otherwise) and raises crate_image.errors.ImageError (str: "problem; fix").
Run as a non-root user, work that writes image files happens in a user namespace mapping the
caller's subordinate ids (crate_image.rootless), so call these from a single-threaded process.
"""
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass

from crate_image import bundle as bundles
from crate_image.flatten import flatten
from crate_image import platform as platforms
from crate_image import rootless as userns
from crate_image.config import load_registries
from crate_image.errors import ImageError, NotFound
from crate_image.progress import Progress
from crate_image.pull import Image, check_config, ensure_layers
from crate_image.pull import pull as _pull
from crate_image.store import Store, remove_tree

__all__ = ["Image", "Bundle", "pull", "image", "images", "inspect", "remove", "prune", "unpack",
           "make_bundle", "remove_bundle", "login", "logout"]


@dataclass
class Bundle:
    path: str          # the bundle directory (config.json, rootfs/)
    rootfs: str        # path/rootfs
    mode: str          # "overlay" (a mount of the image's layers) or "copy" (a flattened tree)
    rootless: bool
    config: dict       # the runtime config.json written
    image: str         # the manifest digest it was made from


def _store(root):
    return Store(root)


def _platform(value):
    if value is None or isinstance(value, platforms.Platform):
        return value
    return platforms.parse(value)


def pull(reference, *, root=None, platform=None, progress=None, authfile=None, credentials=None,
         registries_conf=None, client=None):
    """Pull `reference` (docker grammar) for `platform` ("os/arch[/variant]", default the host).

    progress: a crate_image.progress.Progress (default silent). credentials: {registry: Credentials}
    overriding the auth files. Returns an Image whose layer_dirs are ready as overlay lower dirs."""
    store = _store(root)
    wanted = _platform(platform)

    def work():
        c = client
        if c is None:
            from crate_image.registry import Client  # the HTTP stack loads only when pulling
            c = Client(load_registries(registries_conf), authfile=authfile, credentials=credentials)
        return _pull(reference, store, c, wanted, progress or Progress())
    return userns.maybe(work)


def image(reference, *, root=None, extract=True):
    """A stored image by name, digest or id prefix; extracts missing layers when `extract`."""
    store = _store(root)
    name, desc = store.lookup(reference)
    manifest = store.read_json(desc["digest"])
    if "manifests" in manifest:
        # a multi-platform index (skopeo copy --all writes those): this host's image in it
        chosen = platforms.select(manifest, platforms.host(), reference)
        if not store.has_blob(chosen["digest"]):
            raise NotFound(f"{reference}: the index lists {chosen['digest']} for this platform but the store "
                           "lacks it", f"pull it: crate-image pull {reference}")
        desc = dict(chosen, annotations=desc.get("annotations"))
        manifest = store.read_json(chosen["digest"])
    config = store.read_json(manifest["config"]["digest"])
    dirs = [store.layer_dir(d) for d in check_config(config, manifest, reference)]
    if extract and not all(os.path.isdir(d) for d in dirs):
        def work():
            with store.gc_lock():
                return ensure_layers(store.ensure(), manifest, config)
        dirs = userns.maybe(work)
    source = (desc.get("annotations") or {}).get("io.crate.image.source.digest") or desc["digest"]
    return Image(name or desc["digest"], desc["digest"], desc.get("mediaType") or manifest.get("mediaType"),
                 manifest["config"]["digest"], config, manifest, dirs, source)


def images(*, root=None):
    """[{name, digest, id, created, size, platform}] for every ref in the store."""
    store = _store(root)
    out = []
    for name, desc in store.refs():
        entry = {"name": name, "digest": desc["digest"], "id": None, "created": None, "size": None,
                 "platform": None}
        with contextlib.suppress(ImageError, OSError, ValueError, KeyError):
            manifest = store.read_json(desc["digest"])
            config = store.read_json(manifest["config"]["digest"])
            entry.update(id=manifest["config"]["digest"], created=config.get("created"),
                         size=sum(d.get("size", 0) for d in manifest.get("layers", [])),
                         platform="/".join(x for x in (config.get("os"), config.get("architecture"),
                                                       config.get("variant")) if x))
        out.append(entry)
    return out


def inspect(reference, *, root=None):
    """What `docker image inspect` / `skopeo inspect` tell, from the store."""
    img = image(reference, root=root, extract=False)
    cfg = img.config.get("config") or {}
    return {
        "Name": img.name, "Digest": img.digest, "RepoDigest": img.source_digest, "Id": img.config_digest,
        "MediaType": img.media_type,
        "Created": img.config.get("created"), "Author": img.config.get("author"),
        "Os": img.config.get("os"), "Architecture": img.config.get("architecture"),
        "Variant": img.config.get("variant"),
        "Size": sum(d.get("size", 0) for d in img.manifest.get("layers", [])),
        "Layers": [d["digest"] for d in img.manifest.get("layers", [])],
        "LayerMediaTypes": [d.get("mediaType") for d in img.manifest.get("layers", [])],
        "DiffIds": (img.config.get("rootfs") or {}).get("diff_ids", []),
        "Config": cfg, "Labels": cfg.get("Labels") or {}, "Env": cfg.get("Env") or [],
        "History": img.config.get("history") or [],
    }


def remove(reference, *, root=None):
    """Remove a ref (docker rmi / untag); blobs go with the next prune. Returns the ref name."""
    store = _store(root)
    name, desc = store.lookup(reference)
    if name is None:
        raise ImageError(f"{reference} has no name in the store", "remove it by name")
    store.remove_ref(name)
    return name


def prune(*, root=None):
    """Remove blobs and extracted layers that no ref or live bundle reaches."""
    store = _store(root)
    if not store.exists():
        return {"blobs": 0, "layers": 0, "bytes": 0}
    blobs, layer_count, freed = userns.maybe(store.prune, remove_tree)
    return {"blobs": blobs, "layers": layer_count, "bytes": freed}


def _new_dir(path, what):
    path = os.path.abspath(path)
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path) or os.listdir(path):
            raise ImageError(f"{what} {path} already exists and is not an empty directory",
                             "choose a new path or remove it first")
        return path, False
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ImageError(f"the parent of {what} {path} does not exist", f"create {parent} first")
    return path, True


def _flatten(store, img, target):
    """img's filesystem as plain files in the directory target, copied from its extracted layers
    (extracted now if a layout written by another tool, or a prune, left them out)."""
    dirs = img.layer_dirs
    if not all(os.path.isdir(d) for d in dirs):
        dirs = ensure_layers(store.ensure(), img.manifest, img.config)
    flatten(dirs, target, userns.overlay_xattr_ns(), userns.is_real_root())


def unpack(reference, target, *, root=None):
    """A flattened copy of the image's filesystem in `target` (new or empty), as umoci unpack's rootfs."""
    store = _store(root)
    img = image(reference, root=root, extract=False)
    target, created = _new_dir(target, "target")

    def work():
        with store.gc_lock():
            if created:
                os.mkdir(target, 0o755)
            try:
                _flatten(store, img, target)
                # recorded like a bundle, so `unbundle` may remove it (its files can belong to
                # subordinate ids a plain rm cannot touch)
                with open(_record_path(store, target), "w", encoding="utf-8") as f:
                    json.dump({"bundle": target, "image": img.digest, "name": img.name, "rootfs": "unpack",
                               "diff_ids": []}, f)
            except BaseException:
                if created:
                    remove_tree(target)
                else:
                    for entry in os.listdir(target):
                        remove_tree(os.path.join(target, entry))
                raise
        return target
    return userns.maybe(work)


def _record_path(store, bundle_path):
    return os.path.join(store.bundles, hashlib.sha256(bundle_path.encode()).hexdigest()[:32] + ".json")


def make_bundle(reference, bundle_dir, *, root=None, rootless=None, rootfs="auto", args=None, entrypoint=None,
                env=None, user=None, workdir=None, hostname="crate", terminal=False, network_namespace=None):
    """Make an OCI bundle (config.json + rootfs) for crate-runc from a stored image.

    rootless: None = rootless when not root. rootfs: "overlay" (mount of the layers; root only),
    "copy" (flattened tree) or "auto" (overlay as root, copy otherwise). args/entrypoint/env/user/
    workdir override the image's Cmd/Entrypoint/Env/User/WorkingDir as docker run does."""
    store = _store(root)
    is_rootless = (not userns.is_real_root()) if rootless is None else bool(rootless)
    if rootfs not in ("auto", "overlay", "copy"):
        raise ImageError(f"unknown rootfs kind {rootfs!r}", "use overlay, copy or auto")
    mode = ("overlay" if userns.is_real_root() else "copy") if rootfs == "auto" else rootfs
    if mode == "overlay" and not userns.is_real_root():
        raise ImageError("an overlay rootfs outside a user namespace needs root",
                         "make a flattened bundle (--copy), or mount image.layer_dirs inside your namespace")
    img = image(reference, root=root, extract=(mode == "overlay"))
    path, created = _new_dir(bundle_dir, "bundle directory")
    rootfs_dir = os.path.join(path, "rootfs")
    mappings = userns.id_maps() if is_rootless else None  # of the caller, not of the helper namespace

    def work():
        with store.gc_lock():
            if created:
                os.mkdir(path, 0o711)
            mounted = False
            try:
                os.mkdir(rootfs_dir, 0o755)
                record = {"bundle": path, "image": img.digest, "name": img.name, "rootfs": mode,
                          "diff_ids": (img.config.get("rootfs") or {}).get("diff_ids", [])}
                store.ensure()
                with open(_record_path(store, path), "w", encoding="utf-8") as f:
                    json.dump(record, f)
                used = mode
                if mode == "overlay":
                    upper, work_dir = os.path.join(path, "overlay", "upper"), os.path.join(path, "overlay", "work")
                    os.makedirs(upper, 0o755)
                    os.makedirs(work_dir, 0o700)
                    try:
                        bundles.mount_overlay(img.layer_dirs, upper, work_dir, rootfs_dir)
                        mounted = True
                    except ImageError:
                        if rootfs != "auto":
                            raise
                        used = "copy"  # no overlayfs here (or not on this filesystem): copy instead
                        remove_tree(os.path.join(path, "overlay"))
                if used == "copy":
                    _flatten(store, img, rootfs_dir)
                config = bundles.runtime_config(img.config, rootfs_dir, rootless=is_rootless, args=args,
                                                entrypoint=entrypoint, env=env, user=user, workdir=workdir,
                                                hostname=hostname, terminal=terminal,
                                                network_namespace=network_namespace, mappings=mappings)
                with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
                    json.dump(config, f, indent=2)
                return config, used
            except BaseException:
                if mounted:
                    bundles.unmount(rootfs_dir)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_record_path(store, path))
                if created:
                    remove_tree(path)
                else:
                    for entry in os.listdir(path):
                        remove_tree(os.path.join(path, entry))
                raise
    config, used = userns.maybe(work) if mode == "copy" else work()
    return Bundle(path, rootfs_dir, used, is_rootless, config, img.digest)


def remove_bundle(bundle_dir, *, root=None):
    """Unmount (if overlay) and delete a bundle made by make_bundle (or a tree made by unpack).
    Only directories this store recorded are removed: never an arbitrary path."""
    store = _store(root)
    path = os.path.abspath(bundle_dir)
    if not os.path.isdir(path):
        raise ImageError(f"no bundle at {path}", "give the directory crate-image bundle (or unpack) created")
    if not os.path.exists(_record_path(store, path)):
        raise ImageError(f"{path} was not made by crate-image bundle or unpack with the store {store.root}",
                         "remove it yourself, or pass the --root it was made with")
    rootfs_dir = os.path.join(path, "rootfs")
    if bundles.is_mountpoint(rootfs_dir):
        bundles.unmount(rootfs_dir)
    userns.maybe(remove_tree, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_record_path(store, path))


def login(registry, username, password, *, authfile=None, registries_conf=None):
    """Check the credentials against the registry, then store them; returns the file written."""
    from crate_image import auth
    from crate_image.registry import Client
    client = Client(load_registries(registries_conf), authfile=authfile,
                    credentials={registry: auth.Credentials(username, password)})
    client.ping(registry)
    return auth.store(registry, username, password, authfile)


def logout(registry, *, authfile=None):
    from crate_image import auth
    return auth.remove(registry, authfile)
