"""Build real test images offline and push them to a real registry.

The busybox rootfs comes from Debian's busybox-static (/bin/busybox plus one symlink per applet,
/etc/passwd, /etc/group). Images are written as OCI image layouts (usable by skopeo and umoci)
in either OCI or Docker v2 schema 2 media types, single-arch or as a multi-arch index, and pushed
with the distribution HTTP API (POST upload + monolithic PUT, then the manifest).
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

import requests

EPOCH = 1700000000  # fixed mtimes keep layers and digests reproducible
CREATED = "2023-11-14T22:13:20Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MEDIA = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "gzip": OCI_LAYER_GZIP,
            "tar": OCI_LAYER_TAR},
    "docker": {"manifest": DOCKER_MANIFEST, "index": DOCKER_LIST, "config": DOCKER_CONFIG,
               "gzip": DOCKER_LAYER_GZIP, "tar": "application/vnd.docker.image.rootfs.diff.tar"},
}

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
crate:x:1000:1000:crate test user:/home/crate:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
crate:x:1000:
extra:x:2000:crate
nogroup:x:65534:
"""


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def find_static_busybox(candidates=("/bin/busybox", "/usr/bin/busybox")):
    """Path of a statically linked busybox (Debian's busybox-static), or None."""
    for path in candidates:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            continue
        # a dynamic ELF names its loader in PT_INTERP near the start of the file
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"ld-musl" not in head:
            return path
    return None


class TarBuilder:
    """A deterministic tar layer written in memory."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, kind, mode, uid=0, gid=0):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, EPOCH
        return info

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(self._info(name.rstrip("/") + "/", tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name, data=b"", mode=0o644, uid=0, gid=0):
        data = data.encode() if isinstance(data, str) else data
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name, target):
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def hardlink(self, name, target, mode=0o644):
        info = self._info(name, tarfile.LNKTYPE, mode)
        info.linkname = target
        self.tar.addfile(info)

    def whiteout(self, path):
        head, base = os.path.split(path.rstrip("/"))
        self.file(os.path.join(head, ".wh." + base))

    def opaque(self, directory):
        self.file(directory.rstrip("/") + "/.wh..wh..opq")

    def close(self):
        self.tar.close()
        return self.buffer.getvalue()


def busybox_rootfs_tar(busybox, marker=None):
    """An Alpine-like rootfs: /bin/busybox, an applet symlink each, passwd/group. Returns tar bytes."""
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    applets = sorted(a for a in applets if a not in ("bin/busybox", "linuxrc"))
    t = TarBuilder()
    dirs = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
            "run": 0o755, "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
            "usr/sbin": 0o755, "var": 0o755, "var/tmp": 0o1777}
    for name, mode in dirs.items():
        t.dir(name, mode)
    t.dir("home/crate", 0o755, 1000, 1000)
    with open(busybox, "rb") as f:
        t.file("bin/busybox", f.read(), 0o755)
    for applet in applets:
        t.symlink(applet, "/bin/busybox")
    t.file("etc/passwd", PASSWD)
    t.file("etc/group", GROUP)
    t.file("etc/hostname", "busybox\n")
    if marker is not None:
        t.file("etc/crate-image", marker + "\n")
    return t.close()


class Layout:
    """An OCI image layout on disk (oci-layout, index.json, blobs/sha256/)."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        self.index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        self._write_index()

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", *digest.split(":", 1))

    def read_blob(self, digest):
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def put(self, data, media_type):
        digest = sha256(data)
        with open(self.blob_path(digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def put_json(self, obj, media_type):
        return self.put(json.dumps(obj, separators=(",", ":")).encode(), media_type)

    def image(self, layer_tars, config, arch="amd64", variant=None, kind="oci", compress=True):
        """Write config + layers + manifest; returns the manifest descriptor (with platform)."""
        media = MEDIA[kind]
        layers, diff_ids = [], []
        for tar in layer_tars:
            diff_ids.append(sha256(tar))
            if compress:
                layers.append(self.put(gzip.compress(tar, compresslevel=6, mtime=0), media["gzip"]))
            else:
                layers.append(self.put(tar, media["tar"]))
        image_config = {"created": CREATED, "architecture": arch, "os": "linux", "config": config,
                        "rootfs": {"type": "layers", "diff_ids": diff_ids},
                        "history": [{"created": CREATED, "created_by": "crate tests"}] * len(layer_tars)}
        if variant:
            image_config["variant"] = variant
        manifest = {"schemaVersion": 2, "mediaType": media["manifest"],
                    "config": self.put_json(image_config, media["config"]), "layers": layers}
        desc = self.put_json(manifest, media["manifest"])
        desc["platform"] = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        return desc

    def index_of(self, manifests, kind="oci"):
        media = MEDIA[kind]
        return self.put_json({"schemaVersion": 2, "mediaType": media["index"], "manifests": manifests},
                             media["index"])

    def tag(self, desc, name):
        desc = dict(desc, annotations={"org.opencontainers.image.ref.name": name})
        desc.pop("platform", None)
        self.index["manifests"] = [m for m in self.index["manifests"]
                                   if m["annotations"]["org.opencontainers.image.ref.name"] != name]
        self.index["manifests"].append(desc)
        self._write_index()
        return desc

    def _write_index(self):
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(self.index, f)

    def children(self, desc):
        """Blobs a manifest or index reaches, manifests last so a push can follow the order."""
        doc = json.loads(self.read_blob(desc["digest"]))
        if "manifests" in doc:
            out = []
            for child in doc["manifests"]:
                out += self.children(child)
            return out + [desc]
        return [doc["config"]] + doc["layers"] + [desc]


def push(layout, desc, registry_url, repository, tag, auth=None):
    """Push one manifest or index and everything it reaches, byte for byte, to a registry."""
    session = requests.Session()
    session.auth = auth
    base = f"{registry_url}/v2/{repository}"
    for blob in layout.children(desc):
        data = layout.read_blob(blob["digest"])
        if blob["mediaType"] in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
            ref = tag if blob is desc else blob["digest"]
            r = session.put(f"{base}/manifests/{ref}", data=data, headers={"Content-Type": blob["mediaType"]})
            r.raise_for_status()
            continue
        if session.head(f"{base}/blobs/{blob['digest']}").status_code == 200:
            continue
        r = session.post(f"{base}/blobs/uploads/")
        r.raise_for_status()
        location = requests.compat.urljoin(registry_url, r.headers["Location"])
        sep = "&" if "?" in location else "?"
        r = session.put(f"{location}{sep}digest={blob['digest']}", data=data,
                        headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
    return f"{repository}:{tag}"


BUSYBOX_CONFIG = {"Env": [PATH_ENV], "Cmd": ["/bin/sh"], "WorkingDir": "/"}


def build_busybox_images(layout, busybox):
    """The standard busybox set: returns {name: descriptor} for single-arch and multi-arch images.

    The arm64 entry carries the same (amd64) binary with a marker file /etc/crate-image saying
    "arm64": it exists to test platform selection, not to run on an arm64 host.
    """
    amd64_tar = busybox_rootfs_tar(busybox, marker="amd64")
    arm64_tar = busybox_rootfs_tar(busybox, marker="arm64")
    out = {}
    for kind in ("oci", "docker"):
        amd = layout.image([amd64_tar], BUSYBOX_CONFIG, "amd64", kind=kind)
        arm = layout.image([arm64_tar], BUSYBOX_CONFIG, "arm64", "v8", kind=kind)
        out[f"{kind}-amd64"] = layout.tag(amd, f"busybox-{kind}-amd64")
        out[f"{kind}-index"] = layout.tag(layout.index_of([amd, arm], kind), f"busybox-{kind}-index")
    out["oci-uncompressed"] = layout.tag(
        layout.image([amd64_tar], BUSYBOX_CONFIG, "amd64", compress=False), "busybox-oci-uncompressed")
    return out


# ------------------------------------------------------------------ crate-image test images
# (added for crate-image's tests; nothing above changes)
import base64
import hashlib as _hashlib
import stat as _stat

LONG_NAME = "data/long/" + "n" * 150 + ".txt"
LONG_TARGET = "/data/" + "t" * 200
ATTESTATION = "application/vnd.in-toto+json"


def _special(t, name, kind, mode=0o644, uid=0, gid=0, major=0, minor=0, xattrs=None, data=b""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, EPOCH
    info.devmajor, info.devminor = major, minor
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    info.size = len(data)
    t.tar.addfile(info, io.BytesIO(data) if data else None)


def edge_case_layers():
    """Four layers to put on a busybox base: additions, removals (whiteouts, an opaque dir, type
    changes), an empty layer and re-additions. Returns a list of tar bytes."""
    t = TarBuilder()
    t.dir("data")
    t.file("data/keep.txt", "keep v1\n")
    t.file("data/remove-me.txt", "remove me\n")
    t.file("data/readd.txt", "readd v1\n")
    t.dir("data/opaque")
    t.file("data/opaque/a.txt", "a\n")
    t.dir("data/opaque/sub")
    t.file("data/opaque/sub/b.txt", "b\n")
    t.dir("data/gone")
    t.file("data/gone/x.txt", "x\n")
    t.dir("data/gone/y")
    t.file("data/gone/y/z.txt", "z\n")
    t.file("data/hard-a.txt", "hardlinked content\n", mode=0o640)
    t.hardlink("data/hard-b.txt", "data/hard-a.txt", mode=0o640)
    t.dir("data/sub")
    t.hardlink("data/sub/hard-c.txt", "data/hard-a.txt", mode=0o640)
    t.symlink("data/sym-rel", "keep.txt")
    t.symlink("data/sym-abs", "/data/keep.txt")
    t.symlink("data/sym-dir", "opaque")
    t.symlink("data/sym-dangling", "/nonexistent/target")
    t.symlink("data/sym-escape", "../../../../etc/passwd")
    t.symlink("data/sym-long", LONG_TARGET)
    _special(t, "data/fifo", tarfile.FIFOTYPE, 0o640)
    _special(t, "data/null", tarfile.CHRTYPE, 0o666, major=1, minor=3)
    t.file("data/setuid", "#!/bin/sh\necho setuid\n", mode=0o4755)
    t.file("data/setgid", "#!/bin/sh\necho setgid\n", mode=0o2755, gid=1000)
    t.dir("data/setgid-dir", mode=0o2775, gid=1000)
    t.dir("data/sticky", mode=0o1777)
    t.file("data/private.txt", "secret\n", mode=0o600, uid=1000, gid=1000)
    t.dir("data/owned", mode=0o750, uid=1000, gid=1000)
    t.file("data/owned/file.txt", "owned by crate\n", uid=1000, gid=1000)
    t.file("data/nobody.txt", "owned by 65534\n", uid=65534, gid=65534)
    _special(t, "data/xattr.txt", tarfile.REGTYPE, xattrs={"user.crate.test": "hello"}, data=b"has xattrs\n")
    t.dir("data/long")
    t.file(LONG_NAME, "long name\n")
    t.file("data/unicode-\u00e9\u00e8-\u2603.txt", "unicode\n")
    t.file("data/space name.txt", "space\n")
    t.file("data/file-to-dir", "was a file\n")
    t.dir("data/dir-to-file")
    t.file("data/dir-to-file/inner.txt", "inner\n")
    t.file("data/empty", "")
    t.file("data/exec.sh", "#!/bin/sh\necho exec-ok\n", mode=0o755)
    t.file("etc/motd", "welcome to the layers image\n")
    add = t.close()
    t = TarBuilder()
    t.dir("data")
    t.file("data/dir-to-file", "now a file\n")
    t.dir("data/file-to-dir")
    t.file("data/file-to-dir/inside.txt", "inside\n")
    t.whiteout("data/gone")
    t.file("data/keep.txt", "keep v2\n")
    t.dir("data/opaque")
    t.opaque("data/opaque")
    t.file("data/opaque/new.txt", "new\n")
    t.whiteout("data/readd.txt")
    t.whiteout("data/remove-me.txt")
    t.dir("etc")
    t.whiteout("etc/hostname")
    remove = t.close()
    empty = b"\0" * 1024
    t = TarBuilder()
    t.dir("data")
    t.dir("data/gone")
    t.file("data/gone/back.txt", "back\n")
    t.file("data/readd.txt", "readd v2\n")
    readd = t.close()
    return [add, remove, empty, readd]


def build_edge_case_image(layout, busybox, kind="docker"):
    """busybox + edge_case_layers() as one image; returns its manifest descriptor."""
    config = {"Env": [PATH_ENV, "CRATE_LAYERS=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/data"}
    return layout.image([busybox_rootfs_tar(busybox)] + edge_case_layers(), config, kind=kind)


CONFIG_IMAGE_CONFIG = {"User": "crate", "Env": [PATH_ENV, "FOO=bar", "EMPTY="],
                       "Entrypoint": ["/bin/echo", "entrypoint:"], "Cmd": ["default", "cmd"],
                       "WorkingDir": "/home/crate", "Labels": {"org.example.test": "crate"},
                       "ExposedPorts": {"8080/tcp": {}}, "StopSignal": "SIGQUIT"}


def build_config_image(layout, busybox):
    """busybox with Entrypoint, Cmd, a named User, WorkingDir, Env, Labels and StopSignal."""
    return layout.image([busybox_rootfs_tar(busybox)], CONFIG_IMAGE_CONFIG)


def attestation_index(layout, platform_descs):
    """An OCI index with the given manifests plus a buildx-style attestation manifest."""
    entries = []
    for desc in platform_descs:
        desc = {k: v for k, v in desc.items() if k != "annotations"}
        if "platform" not in desc:
            manifest = json.loads(layout.read_blob(desc["digest"]))
            config = json.loads(layout.read_blob(manifest["config"]["digest"]))
            desc["platform"] = {k: config[k] for k in ("architecture", "os", "variant") if k in config}
        entries.append(desc)
    platform_descs = entries
    statement = layout.put(b'{"_type":"https://in-toto.io/Statement/v0.1","subject":[]}', ATTESTATION)
    config = layout.put_json({"architecture": "unknown", "os": "unknown", "config": {},
                              "rootfs": {"type": "layers", "diff_ids": [statement["digest"]]}}, OCI_CONFIG)
    manifest = layout.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                "layers": [statement]}, OCI_MANIFEST)
    manifest["platform"] = {"architecture": "unknown", "os": "unknown"}
    manifest["annotations"] = {"vnd.docker.reference.type": "attestation-manifest",
                               "vnd.docker.reference.digest": (platform_descs or [manifest])[0]["digest"]}
    return layout.index_of(list(platform_descs) + [manifest])


def zstd_image(layout, busybox):
    """busybox with a tar+zstd layer (needs the zstandard package)."""
    import zstandard
    tar = busybox_rootfs_tar(busybox, marker="zstd")
    blob = layout.put(zstandard.ZstdCompressor(level=3).compress(tar), "application/vnd.oci.image.layer.v1.tar+zstd")
    image_config = {"created": CREATED, "architecture": "amd64", "os": "linux", "config": BUSYBOX_CONFIG,
                    "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": layout.put_json(image_config, OCI_CONFIG), "layers": [blob]}
    return layout.put_json(manifest, OCI_MANIFEST)


def raw_layer_image(layout, tars, config=None):
    """An OCI image from raw tar bytes (e.g. hostile layers), gzip-compressed."""
    return layout.image(list(tars), config or BUSYBOX_CONFIG, kind="oci")


def list_tree(root):
    """One line per path below root: 'path type mode uid:gid detail [link=first-path] [xattrs=...]',
    sorted; detail is size:sha256-prefix for files, the target for symlinks, major,minor for devices."""
    out, inodes = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = st.st_mode
            if _stat.S_ISDIR(mode):
                kind, detail = "d", ""
            elif _stat.S_ISLNK(mode):
                kind, detail = "l", "-> " + os.readlink(full)
            elif _stat.S_ISREG(mode):
                with open(full, "rb") as f:
                    digest = _hashlib.sha256(f.read()).hexdigest()[:12]
                kind, detail = "f", f"{st.st_size}:{digest}"
                if st.st_nlink > 1:
                    detail += " link=" + inodes.setdefault((st.st_dev, st.st_ino), rel)
            elif _stat.S_ISFIFO(mode):
                kind, detail = "p", ""
            elif _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode):
                kind = "c" if _stat.S_ISCHR(mode) else "b"
                detail = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
            else:
                kind, detail = "?", ""
            xattrs = ""
            try:
                names = sorted(n for n in os.listxattr(full, follow_symlinks=False) if not n.startswith("trusted.overlay"))
            except OSError:
                names = []
            if names:
                xattrs = " xattrs=" + ",".join(
                    f"{n}={base64.b64encode(os.getxattr(full, n, follow_symlinks=False)).decode()}" for n in names)
            out.append(f"{rel} {kind} {_stat.S_IMODE(mode):04o} {st.st_uid}:{st.st_gid} {detail}{xattrs}")
    return out
