"""Layers: decompression by magic, safe tar extraction, whiteouts in overlay form or applied flat.

Two extraction modes share one engine:
- "layer": one layer into its own directory, whiteouts kept the way overlayfs reads them (a 0:0
  character device per deleted path, the `<ns>.overlay.opaque=y` xattr on opaque directories,
  ns = trusted as root and user for rootless overlay mounted with `userxattr`);
- "flat": layers applied one after the other into one tree (whiteouts delete, opaque dirs are
  emptied of what lower layers put there), as umoci unpack does.

Safety: every path is resolved inside the target with openat2(RESOLVE_IN_ROOT) (or a
component-by-component walk that resolves symlinks inside the root where openat2 is missing), and
names are created relative to that directory fd, never by a host path. `..` that climbs out of
the root is refused, absolute names are taken relative to the root, a hardlink may only point at a
file already inside the target, device nodes are skipped unless we are real root, and overlay
xattrs inside a layer are dropped so an image cannot steer the overlay mount.
"""
import ctypes
import errno
import hashlib
import lzma
import bz2
import os
import stat
import tarfile
import zlib

from crate_image.errors import DigestMismatch, ImageError, UnsafeLayer
from crate_image.rootless import is_real_root

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
READ_SIZE = 1 << 20


# ------------------------------------------------------------------ decompression
def _zstd_decompressor():
    try:
        import zstandard
    except ImportError:
        raise ImageError("a zstd layer needs the zstandard package", "pip install zstandard")
    return zstandard.ZstdDecompressor().decompressobj()


class _Codec:
    """Chunk-wise decompression that continues across concatenated members/frames."""

    def __init__(self, kind):
        self.kind = kind
        self.obj = self._new()

    def _new(self):
        if self.kind == "gzip":
            return zlib.decompressobj(wbits=31)
        if self.kind == "zstd":
            return _zstd_decompressor()
        if self.kind == "xz":
            return lzma.LZMADecompressor()
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        return None

    def feed(self, data):
        if self.obj is None:
            return data
        out = []
        while data:
            out.append(self.obj.decompress(data))
            if not self.obj.eof:
                break
            data = self.obj.unused_data
            if data and self.kind == "gzip" and not data.startswith(GZIP_MAGIC):
                break  # trailing padding after the last member: ignored, as gzip does
            if data:
                self.obj = self._new()
        return b"".join(out)

    def finish(self):
        if self.obj is None:
            return b""
        if self.kind == "gzip":
            tail = self.obj.flush()
            if not self.obj.eof:
                raise ImageError("a gzip layer ends before its end marker", "the blob is truncated")
            return tail
        if self.kind == "zstd":
            return self.obj.flush() if hasattr(self.obj, "flush") else b""
        return b""


def detect(head):
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    return "tar"


class LayerStream:
    """A file-like view of a layer's uncompressed tar over an iterator of compressed chunks.

    Every compressed byte goes through `on_compressed` (hash + blob file) and is hashed here for
    the blob digest; every uncompressed byte is hashed for the diff_id. finish() drains both
    streams to their ends so the digests cover everything, then checks them.
    """

    def __init__(self, chunks, on_compressed=None, progress=None):
        self.chunks = iter(chunks)
        self.on_compressed = on_compressed
        self.progress = progress
        self.digest = hashlib.sha256()
        self.diff = hashlib.sha256()
        self.codec = None
        self.buf = bytearray()
        self.pos = 0
        self.eof = False
        self.compressed = 0
        self.uncompressed = 0

    def _pull(self):
        """Decompress one more input chunk into the buffer; False at the end of input."""
        if self.eof:
            return False
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.eof = True
            if self.codec is None:
                self.codec = _Codec("tar")
            tail = self.codec.finish()
            self._out(tail)
            return bool(tail)
        if not chunk:
            return True
        self.digest.update(chunk)
        self.compressed += len(chunk)
        if self.on_compressed:
            self.on_compressed(chunk)
        if self.progress:
            self.progress(len(chunk))
        if self.codec is None:
            self.codec = _Codec(detect(bytes(chunk[:6])))
        try:
            self._out(self.codec.feed(chunk))
        except (zlib.error, lzma.LZMAError, OSError, ValueError) as e:
            raise ImageError(f"layer data does not decompress ({self.codec.kind}): {e}", "the blob is corrupt")
        except Exception as e:  # zstandard.ZstdError is not importable without the package
            if type(e).__name__ == "ZstdError":
                raise ImageError(f"layer data does not decompress (zstd): {e}", "the blob is corrupt")
            raise
        return True

    def _out(self, data):
        if data:
            self.diff.update(data)
            self.uncompressed += len(data)
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            self.buf += data

    def read(self, n=-1):
        if n is None or n < 0:
            while self._pull():
                pass
            out = bytes(self.buf[self.pos:])
            self.buf.clear()
            self.pos = 0
            return out
        while len(self.buf) - self.pos < n and self._pull():
            pass
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += len(out)
        return out

    def drain(self):
        while self._pull():
            self.buf.clear()
            self.pos = 0
        self.buf.clear()
        self.pos = 0

    def digests(self):
        return "sha256:" + self.digest.hexdigest(), "sha256:" + self.diff.hexdigest()


def file_chunks(path, size=READ_SIZE):
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            if not data:
                return
            yield data


# ------------------------------------------------------------------ path resolution inside a root
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works = None


def _openat2(dirfd, path, flags):
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _walk_open(rootfd, parts, flags, depth=0, create_dirs=False):
    """openat2 fallback: open a path inside rootfd, following symlinks as if rootfd were '/'.
    create_dirs: make missing directories on the way (where symlinks lead, inside the root)."""
    if depth > 40:
        raise OSError(errno.ELOOP, "too many symlinks")
    stack = []  # fds of the directories walked so far (for '..')
    fd = os.dup(rootfd)
    try:
        todo = list(parts)
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if stack:
                    os.close(fd)
                    fd = stack.pop()
                continue
            last = not todo
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if create_dirs:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                elif last:
                    nfd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    os.close(fd)
                    fd = nfd
                    break
                else:
                    raise
            if stat.S_ISLNK(st.st_mode) and (not last or not flags & os.O_NOFOLLOW):
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    for f in stack:
                        os.close(f)
                    stack = []
                    os.close(fd)
                    fd = os.dup(rootfd)
                todo = target.split("/") + todo
                depth += 1
                if depth > 40:
                    raise OSError(errno.ELOOP, "too many symlinks")
                continue
            nfd = os.open(name, (flags if last else os.O_PATH | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            stack.append(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise
    finally:
        for f in stack:
            os.close(f)


def open_in_root(rootfd, relpath, flags):
    """Open relpath with symlinks resolved as if rootfd were '/': nothing outside is reachable."""
    global _openat2_works
    if _openat2_works is not False:
        try:
            fd = _openat2(rootfd, relpath or ".", flags)
            _openat2_works = True
            return fd
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
                raise
            _openat2_works = False  # no openat2 here (or blocked by seccomp): walk by hand
    return _walk_open(rootfd, relpath.split("/") if relpath else [], flags)


def read_file_in_root(root, relpath, limit=1 << 20):
    """Contents of a file of an unpacked image (e.g. /etc/passwd) or None; never leaves root."""
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(rootfd, relpath.lstrip("/"), os.O_RDONLY)
    except OSError:
        return None
    finally:
        os.close(rootfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def clean_name(name):
    """A tar member name as a root-relative path; UnsafeLayer if '..' climbs out of the root."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeLayer(f"layer entry {name!r} points outside the root",
                                  "the image is malformed or hostile; nothing was written outside the target")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


# ------------------------------------------------------------------ extraction
def _remove_at(dirfd, name):
    """Remove whatever `name` is in dirfd (a whole tree for a directory); missing is fine."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


def _empty_dir(fd, keep=()):
    for entry in os.listdir(fd):
        if entry not in keep:
            _remove_at(fd, entry)


class Extractor:
    """Extract tar streams into `root` (mode "layer" or "flat"); see the module docstring."""

    def __init__(self, root, mode="layer", overlay_ns="trusted", real_root=None, map_ownership=True):
        self.root = root
        self.mode = mode
        self.overlay_ns = overlay_ns
        self.real_root = is_real_root() if real_root is None else real_root
        self.map_ownership = map_ownership  # False: keep everything owned by us (no id mapping)
        self.rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._parent = (None, None)   # cache of the last parent dir: (relpath, fd)
        self.skipped_devices = []
        self.unmapped_owners = 0
        self.dirs = {}                # relpath -> member, metadata applied last
        self.created = set()          # flat mode: paths this layer made (opaque keeps them)

    def close(self):
        self._drop_parent()
        if self.rootfd is not None:
            os.close(self.rootfd)
            self.rootfd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- helpers
    def _drop_parent(self):
        if self._parent[1] is not None:
            os.close(self._parent[1])
        self._parent = (None, None)

    def _parent_fd(self, relpath, create=True):
        """fd of the directory relpath (inside the root), creating missing directories."""
        if self._parent[0] == relpath:
            return self._parent[1]
        self._drop_parent()
        try:
            fd = open_in_root(self.rootfd, relpath, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                raise
            self._mkdirs(relpath)
            fd = open_in_root(self.rootfd, relpath, os.O_RDONLY | os.O_DIRECTORY)
        self._parent = (relpath, fd)
        return fd

    def _mkdirs(self, relpath):
        """Create missing parents (0755, as tar does) inside the root. Symlinks on the way are
        followed inside the root (their targets are created there), as umoci and docker do."""
        try:
            os.close(_walk_open(self.rootfd, relpath.split("/"), os.O_RDONLY | os.O_DIRECTORY, create_dirs=True))
        except NotADirectoryError:
            # a regular file where a parent should be: a directory replaces it, as tar does
            done = ""
            for part in relpath.split("/"):
                parent = open_in_root(self.rootfd, done, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    st = os.stat(part, dir_fd=parent, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                        os.unlink(part, dir_fd=parent)
                        os.mkdir(part, 0o755, dir_fd=parent)
                except FileNotFoundError:
                    os.mkdir(part, 0o755, dir_fd=parent)
                finally:
                    os.close(parent)
                done = f"{done}/{part}".lstrip("/")

    def _owner(self, member):
        return (member.uid, member.gid) if self.map_ownership else (-1, -1)

    def _chown(self, fd_or_name, member, dir_fd=None):
        uid, gid = self._owner(member)
        if uid == -1 and gid == -1:
            return
        try:
            if dir_fd is None:
                os.fchown(fd_or_name, uid, gid)
            else:
                os.chown(fd_or_name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            self.unmapped_owners += 1  # id outside our user namespace: stays ours

    def _xattrs(self, member):
        out = {}
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            # an image must not steer the overlay mount (redirects, metacopy, opaque markers)
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            out[name] = value.encode("utf-8", "surrogateescape")
        return out

    def _set_xattrs(self, fd, member):
        for name, value in self._xattrs(member).items():
            try:
                os.setxattr(fd, name, value)
            except OSError as e:
                # trusted.* needs real root; security.* may be refused by an LSM: skip like umoci
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                    raise

    @staticmethod
    def _times(member):
        ns = int(member.mtime * 1_000_000_000)
        return (ns, ns)

    # ---------------------------------------------------------------- one layer
    def extract(self, tar_stream):
        """Extract one tar (a file-like object giving the uncompressed stream)."""
        self.created = set()
        with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
            for member in tar:
                self._entry(tar, member)

    def finish(self):
        """Apply directory modes and mtimes (children are in place now), deepest first."""
        self._drop_parent()
        for relpath in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            member = self.dirs[relpath]
            try:
                fd = open_in_root(self.rootfd, relpath, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue  # replaced later in the stream by a non-directory
            try:
                self._chown(fd, member)
                os.chmod(fd, stat.S_IMODE(member.mode))
                self._set_xattrs(fd, member)
                os.utime(fd, ns=self._times(member))
            finally:
                os.close(fd)
        self.dirs = {}

    def _entry(self, tar, member):
        relpath = clean_name(member.name)
        parent, _, base = relpath.rpartition("/")
        if not relpath:  # the root itself ("./")
            if member.isdir():
                self.dirs[""] = member
            return
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(parent, base)
        if member.islnk():
            return self._hardlink(member, parent, base, relpath)
        pfd = self._parent_fd(parent)
        if member.isdir():
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    self._replace(pfd, base)
                    os.mkdir(base, 0o700, dir_fd=pfd)
            except FileNotFoundError:
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs[relpath] = member
            self.created.add(relpath)
            return
        self._replace(pfd, base)
        self.created.add(relpath)
        if member.isreg():
            self._regular(tar, member, pfd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
            self._chown(base, member, dir_fd=pfd)
            os.utime(base, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
            self._drop_parent()  # a new symlink may change how later names resolve
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._finish_special(member, pfd, base)
        elif member.ischr() or member.isblk():
            if not self.real_root:
                self.skipped_devices.append(relpath)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
            self._finish_special(member, pfd, base)
        else:
            raise UnsafeLayer(f"layer entry {member.name!r} has unsupported tar type {member.type!r}",
                              "the image is malformed")

    def _finish_special(self, member, pfd, base):
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._chown(base, member, dir_fd=pfd)
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(member.mode))
            os.utime(base, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(fd)

    def _replace(self, pfd, base):
        """Clear the way for a new entry: an existing entry of the same name goes."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._drop_parent_if_not(pfd)
        _remove_at(pfd, base)

    def _drop_parent_if_not(self, pfd):
        if self._parent[1] != pfd:
            self._drop_parent()

    def _regular(self, tar, member, pfd, base):
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            source = tar.extractfile(member)
            remaining = member.size
            while remaining > 0:
                data = source.read(min(remaining, READ_SIZE))
                if not data:
                    raise ImageError(f"layer ends inside {member.name!r}", "the blob is truncated")
                _write_all(fd, data)
                remaining -= len(data)
            self._chown(fd, member)
            os.fchmod(fd, stat.S_IMODE(member.mode))  # after chown, which clears setuid bits
            self._set_xattrs(fd, member)
            os.utime(fd, ns=self._times(member))
        finally:
            os.close(fd)

    def _hardlink(self, member, parent, base, relpath):
        target = clean_name(member.linkname)
        if not target:
            raise UnsafeLayer(f"hardlink {member.name!r} has no target", "the image is malformed")
        tparent, _, tbase = target.rpartition("/")
        try:
            tfd = open_in_root(self.rootfd, tparent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            tfd = None
        try:
            st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False) if tfd is not None else None
        except FileNotFoundError:
            st = None
        if st is None or stat.S_ISDIR(st.st_mode):
            if tfd is not None:
                os.close(tfd)
            raise UnsafeLayer(f"hardlink {member.name!r} -> {member.linkname!r}: the target is not a file "
                              "of this layer", "the image is malformed or hostile; nothing outside the target was touched")
        try:
            pfd = self._parent_fd(parent)
            if relpath == target:
                return
            self._replace(pfd, base)
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            self.created.add(relpath)
        finally:
            os.close(tfd)

    def _whiteout(self, parent, base):
        pfd = self._parent_fd(parent)
        if base == OPAQUE:
            if self.mode == "layer":
                os.setxattr(pfd, f"{self.overlay_ns}.overlay.opaque", b"y")
            else:
                keep = {p.rpartition("/")[2] for p in self.created if p.rpartition("/")[0] == parent}
                self._drop_parent()
                pfd = self._parent_fd(parent)
                _empty_dir(pfd, keep)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk, ...): meaningless here
        name = base[len(WHITEOUT_PREFIX):]
        if not name or name in (".", ".."):
            raise UnsafeLayer(f"whiteout {parent}/{base} names no file", "the image is malformed")
        if self.mode == "layer":
            self._replace(pfd, name)
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        else:
            self._drop_parent_if_not(pfd)
            _remove_at(pfd, name)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def verify(stream, digest, diff_id, what):
    """After a stream is drained: raise DigestMismatch unless both digests match."""
    got_digest, got_diff = stream.digests()
    if digest and got_digest != digest:
        raise DigestMismatch(f"{what} hashes to {got_digest}, not {digest}",
                             "the registry sent corrupt or altered content; nothing was stored")
    if diff_id and got_diff != diff_id:
        raise DigestMismatch(f"{what} uncompresses to {got_diff}, but the image config says {diff_id}",
                             "the image is inconsistent; nothing was stored")
