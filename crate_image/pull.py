"""Pull: resolve a reference, choose the platform, and fetch every layer in one streaming pass.

Each missing layer is downloaded once and, in the same pass, hashed (blob digest), written to a
temp blob, decompressed, hashed again (diff_id) and extracted into a temp directory; both land in
the store (rename) only when both digests match. Layers run in parallel threads (zlib, zstd,
hashing and file I/O release the GIL). The manifest blob and the ref are written last, so a
manifest in the store means its config and layers are there too; a pull that finds the manifest
digest already stored does no blob work.
"""
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from crate_image import layer as layers
from crate_image import platform as platforms
from crate_image import reference as references
from crate_image import media as reg  # media types only: the client comes from the caller
from crate_image.errors import ImageError, NotFound
from crate_image.progress import Progress
from crate_image.rootless import overlay_xattr_ns
from crate_image.store import remove_tree

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}
CONFIG_TYPES = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
# layers extracted at once: one per CPU (measured: more threads only add kernel contention on
# inode creation, which dominates unpacking); CRATE_IMAGE_JOBS overrides
MAX_PARALLEL = int(os.environ.get("CRATE_IMAGE_JOBS") or 0) or min(8, max(2, os.cpu_count() or 1))
SOURCE_DIGEST = "io.crate.image.source.digest"  # the registry's manifest digest, on index.json entries
TO_OCI = {
    "application/vnd.docker.container.image.v1+json": "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass
class Image:
    """An image in the store, as the front end sees it."""
    name: str                 # ref name in index.json (docker.io/library/busybox:latest)
    digest: str               # manifest digest
    media_type: str
    config_digest: str        # the image id
    config: dict              # the image config (os, architecture, config, rootfs, history)
    manifest: dict
    layer_dirs: list = field(default_factory=list)  # extracted layers, lowest first
    source_digest: str | None = None  # the registry's manifest digest (differs when converted to OCI)

    @property
    def id(self):
        return self.config_digest

    @property
    def platform(self):
        return "/".join(x for x in (self.config.get("os"), self.config.get("architecture"),
                                    self.config.get("variant")) if x)


def check_manifest(manifest, what):
    config = manifest.get("config") or {}
    if config.get("mediaType") not in CONFIG_TYPES:
        raise ImageError(f"{what} is not a container image (config type {config.get('mediaType')!r})",
                         "pull an image made by docker, buildah or another OCI image builder")
    for desc in manifest.get("layers") or []:
        if desc.get("mediaType") not in LAYER_TYPES:
            if "foreign" in str(desc.get("mediaType")):
                raise ImageError(f"{what} has a foreign (Windows) layer", "pull a Linux image")
            raise ImageError(f"{what} has a layer of unsupported type {desc.get('mediaType')!r}",
                             "crate-image reads tar layers, gzip-, zstd- or uncompressed")


def to_oci(manifest):
    """A Docker schema 2 manifest as an OCI manifest (as skopeo copy --format oci does): the same
    config and layer blobs under OCI media types. skopeo and umoci read only OCI manifests in a layout."""
    if manifest.get("mediaType") == reg.OCI_MANIFEST or "mediaType" not in manifest and \
            manifest.get("config", {}).get("mediaType") == "application/vnd.oci.image.config.v1+json":
        return None

    def convert(desc):
        return dict(desc, mediaType=TO_OCI.get(desc["mediaType"], desc["mediaType"]))
    oci = {"schemaVersion": 2, "mediaType": reg.OCI_MANIFEST, "config": convert(manifest["config"]),
           "layers": [convert(d) for d in manifest["layers"]]}
    if manifest.get("annotations"):
        oci["annotations"] = manifest["annotations"]
    return json.dumps(oci, separators=(",", ":")).encode()


def check_config(config, manifest, what):
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(manifest.get("layers") or []):
        raise ImageError(f"{what}: the config lists {len(diff_ids)} diff_ids for {len(manifest.get('layers') or [])} "
                         "layers", "the image is malformed")
    return diff_ids


def extract_layer(store, desc, diff_id, chunks, progress=None, write_blob=True):
    """One pass over a layer's compressed bytes: blob file + extracted dir, both verified."""
    if store.has_layer(diff_id) and store.has_blob(desc["digest"]):
        return store.layer_dir(diff_id)  # the chunk generator was never started: no I/O done
    writer = store.blob_writer(desc["digest"], desc.get("size")) if write_blob else None
    tmpdir = store.mkdtemp("layer-")
    os.chmod(tmpdir, 0o755)
    stream = layers.LayerStream(chunks, on_compressed=writer.write if writer else None,
                                progress=(lambda n: progress.advance(desc["digest"], n)) if progress else None)
    try:
        with layers.Extractor(tmpdir, mode="layer", overlay_ns=overlay_xattr_ns()) as ex:
            ex.extract(stream)
            stream.drain()
            ex.finish()
        layers.verify(stream, desc["digest"], diff_id, f"layer {desc['digest']}")
        if writer:
            writer.commit()
            writer = None
        target = store.layer_dir(diff_id)
        try:
            os.rename(tmpdir, target)
        except OSError:
            if not os.path.isdir(target):  # not a concurrent pull that was faster
                raise
            remove_tree(tmpdir)
        return target
    except BaseException:
        if writer:
            writer.abort()
        remove_tree(tmpdir)
        raise


def ensure_layers(store, manifest, config, progress=None):
    """Extract (from the stored blobs) any layer of a stored image that is not extracted yet,
    e.g. for layouts written by skopeo or after prune; returns the layer dirs lowest first."""
    out = []
    for desc, diff_id in zip(manifest["layers"], check_config(config, manifest, "image")):
        if not store.has_layer(diff_id):
            if not store.has_blob(desc["digest"]):
                raise NotFound(f"layer {desc['digest']} is missing from the store", "pull the image again")
            extract_layer(store, desc, diff_id, layers.file_chunks(store.blob_path(desc["digest"])), progress,
                          write_blob=False)
        out.append(store.layer_dir(diff_id))
    return out


def _image_complete(store, manifest):
    return store.has_blob(manifest["config"]["digest"]) and \
        all(store.has_blob(d["digest"]) for d in manifest["layers"])


def _stored_copy(store, source_digest):
    """(bytes, media type, digest) of a complete stored manifest for the registry's manifest
    `source_digest` (the same digest, or our OCI conversion of it), else None."""
    candidates = [(source_digest, None)]
    for _, desc in store.refs():
        if (desc.get("annotations") or {}).get(SOURCE_DIGEST) == source_digest:
            candidates.insert(0, (desc["digest"], desc.get("mediaType")))
    for digest, media_type in candidates:
        if not store.has_blob(digest):
            continue
        try:
            data = store.read_blob(digest)
            media_type, manifest = reg.media_type_of(data, media_type)
        except ImageError:
            continue
        if media_type in reg.MANIFEST_TYPES and not to_oci(manifest) and _image_complete(store, manifest):
            return data, media_type, digest
    return None


def pull(ref_text, store, client, wanted=None, progress=None):
    """Pull ref_text into the store; returns an Image. `wanted` is a Platform (default: the host)."""
    progress = progress or Progress()
    ref = references.parse(ref_text)
    explicit = wanted is not None
    wanted = wanted or platforms.host()
    name = str(ref)
    store.ensure()
    with store.gc_lock():
        endpoint, data, media_type, doc, digest = client.fetch_manifest(ref)
        platform_desc = None
        if media_type in reg.INDEX_TYPES:
            chosen = platforms.select(doc, wanted, str(ref))
            platform_desc = chosen.get("platform")
            digest = chosen["digest"]
            if store.has_blob(digest):
                data = store.read_blob(digest)
                media_type, doc = reg.media_type_of(data, chosen.get("mediaType"))
            else:
                endpoint, data, media_type, doc, digest = client.fetch_manifest(ref.with_digest(digest))
            if media_type in reg.INDEX_TYPES:
                raise ImageError(f"{ref}: nested indexes are not supported", "pull a platform image by digest")
        manifest = doc
        check_manifest(manifest, str(ref))
        progress.message(f"{ref.familiar()}: pulling manifest {digest}")
        source_digest = digest
        stored = _stored_copy(store, digest)
        if stored:
            data, media_type, digest = stored
            manifest = json.loads(data)
            config = store.read_json(manifest["config"]["digest"])
            _check_platform(config, wanted, explicit, ref, progress)
            for d in manifest["layers"]:
                progress.layer(d["digest"], d.get("size"), "exists")
            layer_dirs = ensure_layers(store, manifest, config, progress)
        else:
            config_digest = manifest["config"]["digest"]
            if store.has_blob(config_digest):
                config_bytes = store.read_blob(config_digest)
            else:
                config_bytes = client.fetch_blob_bytes(endpoint, ref.path, config_digest)
            try:
                config = json.loads(config_bytes)
            except ValueError:
                raise ImageError(f"{ref}: the image config is not JSON", "the image is malformed")
            diff_ids = check_config(config, manifest, str(ref))
            _check_platform(config, wanted, explicit, ref, progress)
            layer_dirs = _fetch_layers(store, client, endpoint, ref.path, manifest["layers"], diff_ids, progress)
            store.put_bytes(config_bytes, config_digest)
            converted = to_oci(manifest)
            if converted:
                data, media_type = converted, reg.OCI_MANIFEST
                manifest = json.loads(data)
            digest = store.put_bytes(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data),
                "annotations": {SOURCE_DIGEST: source_digest}}
        plat = platform_desc or {k: config[k] for k in ("os", "architecture", "variant") if config.get(k)}
        if plat.get("os") and plat.get("architecture"):
            desc["platform"] = {k: plat[k] for k in ("architecture", "os", "variant") if plat.get(k)}
        store.set_ref(name, desc)
    progress.close()
    return Image(name, digest, media_type, manifest["config"]["digest"], config, manifest, layer_dirs, source_digest)


def _check_platform(config, wanted, explicit, ref, progress):
    got = platforms.Platform(config.get("os") or "", config.get("architecture") or "", config.get("variant"))
    entry = {"os": got.os, "architecture": got.architecture, "variant": got.variant}
    if platforms.matches(entry, wanted, strict_variant=explicit):
        return
    if explicit:
        raise NotFound(f"{ref} is for {got}, not the requested {wanted}",
                       f"pull it with --platform {got}, or choose an image built for {wanted}")
    progress.warn(f"{ref} is for {got}, which does not match this host ({wanted})")


def _fetch_layers(store, client, endpoint, repository, descs, diff_ids, progress):
    todo = []
    for desc, diff_id in zip(descs, diff_ids):
        if store.has_blob(desc["digest"]) and store.has_layer(diff_id):
            progress.layer(desc["digest"], desc.get("size"), "exists")
        else:
            progress.layer(desc["digest"], desc.get("size"), "waiting")
            todo.append((desc, diff_id))

    failed = threading.Event()

    def cancellable(chunks):
        for chunk in chunks:
            if failed.is_set():
                raise ImageError("stopped because another layer failed", "see the first error")
            yield chunk

    def one(item):
        desc, diff_id = item
        if store.has_blob(desc["digest"]):
            chunks = layers.file_chunks(store.blob_path(desc["digest"]))
            write = False
        else:
            chunks = client.blob_chunks(endpoint, repository, desc["digest"], desc.get("size"))
            write = True
        progress.layer(desc["digest"], desc.get("size"), "downloading")
        try:
            extract_layer(store, desc, diff_id, cancellable(chunks), progress, write_blob=write)
        except BaseException:
            failed.set()
            raise
        progress.layer(desc["digest"], desc.get("size"), "done")

    if todo:
        # biggest first: the longest layer starts at once and the small ones fill in beside it
        todo.sort(key=lambda item: -(item[0].get("size") or 0))
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(todo))) as pool:
            futures = [pool.submit(one, item) for item in todo]
            try:
                errors = [f.exception() for f in futures if f.exception() is not None]
            except BaseException:  # Ctrl-C or SIGTERM: the workers stop at their next chunk and clean up
                failed.set()
                raise
        if errors:
            # the first real failure, not the "stopped because another layer failed" echoes
            real = [e for e in errors if "another layer failed" not in str(e)]
            raise (real or errors)[0]
    return [store.layer_dir(diff_id) for diff_id in diff_ids]
