"""The image store: an OCI image layout under <root>/oci, extracted layers under <root>/layers.

<root>/oci            oci-layout, index.json (refs as org.opencontainers.image.ref.name), blobs/sha256/
<root>/layers/sha256/<diff_id hex>/   one directory per extracted layer (overlay lower dir)
<root>/tmp            temp files and dirs, renamed into place only when complete and verified
<root>/bundles/       one record per bundle made from the store (keeps its layers from prune)

Every blob is hashed while it is written and appears under its digest only when the digest
matches (temp file + rename), so readers never see a partial blob and concurrent writers of the
same blob are harmless. index.json changes under an exclusive flock and are written atomically.
Pulls hold a shared "gc" lock; prune holds it exclusively so it never removes a blob a pull needs.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile

from crate_image import reference as references
from crate_image.config import default_root
from crate_image.errors import DigestMismatch, ImageError, NotFound

REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def check_digest(digest):
    algo, _, hexpart = (digest or "").partition(":")
    if algo != "sha256":
        raise ImageError(f"unsupported digest {digest!r}", "crate-image handles sha256 digests only")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"malformed digest {digest!r}", "a sha256 digest has 64 lowercase hex digits")
    return hexpart


class BlobWriter:
    """Streams one blob into a temp file, hashing as it goes; commit() renames it into place."""

    def __init__(self, store, digest, size=None):
        self.store, self.digest, self.size = store, digest, size
        check_digest(digest)
        self.hash = hashlib.sha256()
        self.written = 0
        fd, self.tmp = tempfile.mkstemp(dir=store.tmp, prefix="blob-")
        self.file = os.fdopen(fd, "wb", buffering=0)

    def write(self, data):
        self.hash.update(data)
        self.file.write(data)
        self.written += len(data)
        if self.size is not None and self.written > self.size:
            raise DigestMismatch(f"blob {self.digest} is longer than its descriptor's {self.size} bytes",
                                 "the registry sent other content than the manifest names; nothing was stored")

    def commit(self):
        self.file.close()
        got = "sha256:" + self.hash.hexdigest()
        if got != self.digest or (self.size is not None and self.written != self.size):
            self.abort()
            raise DigestMismatch(f"blob {self.digest} hashes to {got} ({self.written} bytes)",
                                 "the registry sent corrupt or altered content; nothing was stored")
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.store.blob_path(self.digest))

    def abort(self):
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class Store:
    def __init__(self, root=None):
        self.root = os.path.abspath(root or default_root())
        if ":" in self.root:
            raise ImageError(f"store root {self.root} contains ':'",
                             "skopeo and umoci split oci:PATH:REF at the first ':'; choose a path without one")
        self.oci = os.path.join(self.root, "oci")
        self.blobs = os.path.join(self.oci, "blobs", "sha256")
        self.layers = os.path.join(self.root, "layers", "sha256")
        self.tmp = os.path.join(self.root, "tmp")
        self.bundles = os.path.join(self.root, "bundles")
        self._ready = False

    # ---------------------------------------------------------------- layout
    def ensure(self):
        if self._ready:
            return self
        for d in (self.blobs, self.layers, self.tmp, self.bundles):
            os.makedirs(d, mode=0o755 if d != self.tmp else 0o700, exist_ok=True)
        layout = os.path.join(self.oci, "oci-layout")
        if not os.path.exists(layout):
            self._write_json(layout, LAYOUT_VERSION)
        if not os.path.exists(os.path.join(self.oci, "index.json")):
            with self.index_lock():
                if not os.path.exists(os.path.join(self.oci, "index.json")):
                    self._write_json(os.path.join(self.oci, "index.json"),
                                     {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        self._ready = True
        return self

    def exists(self):
        return os.path.exists(os.path.join(self.oci, "index.json"))

    def _write_json(self, path, doc):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _flock(self, name, mode):
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def index_lock(self):
        return self._flock("index.lock", fcntl.LOCK_EX)

    def gc_lock(self, exclusive=False):
        return self._flock("gc.lock", fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    # ---------------------------------------------------------------- blobs
    def blob_path(self, digest):
        return os.path.join(self.blobs, check_digest(digest))

    def has_blob(self, digest, size=None):
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def read_blob(self, digest, verify=True):
        try:
            with open(self.blob_path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store {self.oci}",
                           "pull the image again (crate-image pull)")
        if verify and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} in {self.oci} is corrupt", "run crate-image rmi and pull again")
        return data

    def read_json(self, digest):
        return json.loads(self.read_blob(digest))

    def put_bytes(self, data, digest=None):
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(digest, len(data)):
            return digest
        writer = BlobWriter(self.ensure(), digest, len(data))
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        return digest

    def blob_writer(self, digest, size=None):
        return BlobWriter(self.ensure(), digest, size)

    # ---------------------------------------------------------------- refs
    def index(self):
        try:
            with open(os.path.join(self.oci, "index.json"), encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError as e:
            raise ImageError(f"{self.oci}/index.json is not valid JSON: {e}", "restore or remove the store")
        return doc

    def refs(self):
        """[(ref name or None, descriptor)] in index order."""
        return [((m.get("annotations") or {}).get(REF_NAME), m) for m in self.index().get("manifests", [])]

    def set_ref(self, name, descriptor):
        """Point `name` at a manifest descriptor (replacing any previous target)."""
        self.ensure()
        desc = {k: descriptor[k] for k in ("mediaType", "digest", "size") if k in descriptor}
        if descriptor.get("platform"):
            desc["platform"] = descriptor["platform"]
        desc["annotations"] = dict(descriptor.get("annotations") or {}, **{REF_NAME: name})
        with self.index_lock():
            doc = self.index()
            doc["manifests"] = [m for m in doc.get("manifests", [])
                                if (m.get("annotations") or {}).get(REF_NAME) != name] + [desc]
            self._write_json(os.path.join(self.oci, "index.json"), doc)
        return desc

    def remove_ref(self, name):
        with self.index_lock():
            doc = self.index()
            kept = [m for m in doc.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) != name]
            if len(kept) == len(doc.get("manifests", [])):
                return False
            doc["manifests"] = kept
            self._write_json(os.path.join(self.oci, "index.json"), doc)
        return True

    def lookup(self, text):
        """(ref name, descriptor) for a user's name: a ref as stored, its docker normalisation, a
        manifest digest, or an image id (config digest) prefix of at least 4 hex digits."""
        refs = self.refs()
        candidates = [text]
        with contextlib.suppress(ImageError):
            candidates.insert(0, str(references.parse(text)))
        for cand in candidates:
            for name, desc in refs:
                if name == cand:
                    return name, desc
        hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
        if len(hexpart) >= 4 and all(c in "0123456789abcdef" for c in hexpart):
            found = []
            for name, desc in refs:
                if desc["digest"][7:].startswith(hexpart):
                    found.append((name, desc))
                    continue
                with contextlib.suppress(ImageError, OSError, ValueError, KeyError):
                    if self.config_digest(desc)[7:].startswith(hexpart):
                        found.append((name, desc))
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                names = ", ".join(sorted(str(n) for n, _ in found))
                raise ImageError(f"{text!r} matches {len(found)} image names ({names})", "use a name")
        raise NotFound(f"no image {text!r} in the store {self.oci}", f"pull it first: crate-image pull {text}")

    def config_digest(self, desc):
        return self.read_json(desc["digest"])["config"]["digest"]

    # ---------------------------------------------------------------- layers
    def layer_dir(self, diff_id):
        return os.path.join(self.layers, check_digest(diff_id))

    def has_layer(self, diff_id):
        return os.path.isdir(self.layer_dir(diff_id))

    def mkdtemp(self, prefix):
        self.ensure()
        return tempfile.mkdtemp(dir=self.tmp, prefix=prefix)

    # ---------------------------------------------------------------- reachability and prune
    def reachable(self):
        """(blob digests, layer diff_ids) reached from index.json refs and recorded bundles."""
        blobs, diff_ids = set(), set()

        def walk(digest):
            if digest in blobs:
                return
            blobs.add(digest)
            try:
                doc = self.read_json(digest)
            except (NotFound, ValueError, DigestMismatch):
                return
            if "manifests" in doc:
                for child in doc["manifests"]:
                    if self.has_blob(child["digest"]):
                        walk(child["digest"])
                return
            if "config" in doc:
                blobs.add(doc["config"]["digest"])
                blobs.update(layer["digest"] for layer in doc.get("layers", []))
                with contextlib.suppress(NotFound, ValueError, DigestMismatch, KeyError):
                    diff_ids.update(self.read_json(doc["config"]["digest"])["rootfs"]["diff_ids"])

        for _, desc in self.refs():
            walk(desc["digest"])
        for record in self.bundle_records():
            diff_ids.update(record.get("diff_ids", []))
        return blobs, diff_ids

    def bundle_records(self):
        """Bundles that still exist; records of removed bundle dirs are dropped."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.bundles):
                path = os.path.join(self.bundles, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        record = json.load(f)
                except (OSError, ValueError):
                    continue
                if os.path.isdir(record.get("bundle", "")):
                    out.append(record)
        return out

    def prune(self, remove_tree):
        """Delete blobs and extracted layers no ref (or live bundle) reaches, and stale temp files.
        Returns (blobs removed, layers removed, bytes freed)."""
        with self.gc_lock(exclusive=True):
            blobs, diff_ids = self.reachable()
            removed_blobs = removed_layers = freed = 0
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.blobs):
                    if f"sha256:{name}" not in blobs:
                        path = os.path.join(self.blobs, name)
                        freed += os.lstat(path).st_size
                        os.unlink(path)
                        removed_blobs += 1
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.layers):
                    if f"sha256:{name}" not in diff_ids:
                        remove_tree(os.path.join(self.layers, name))
                        removed_layers += 1
            # nothing writes temp files without the shared gc lock, so everything left is debris
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.tmp):
                    path = os.path.join(self.tmp, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        remove_tree(path)
                    else:
                        os.unlink(path)
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.bundles):
                    path = os.path.join(self.bundles, name)
                    try:
                        with open(path, encoding="utf-8") as f:
                            alive = os.path.isdir(json.load(f).get("bundle", ""))
                    except (OSError, ValueError):
                        alive = False
                    if not alive:
                        os.unlink(path)
            return removed_blobs, removed_layers, freed


def remove_tree(path):
    """rm -rf that also copes with read-only directories inside the tree."""
    def onerror(func, p, exc_info):
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(p, 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=onerror)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
