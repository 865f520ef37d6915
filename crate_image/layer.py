"""Layers: safe extraction of a tar stream, whiteouts in overlay form or applied flat.

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
import errno
import os
import stat

from crate_image import tar
from crate_image.compression import LayerStream, detect, file_chunks
from crate_image.errors import DigestMismatch, ImageError, UnsafeLayer
from crate_image.inroot import walk_open, clean_name, open_in_root, read_file_in_root
from crate_image.rootless import is_real_root

__all__ = ["Extractor", "LayerStream", "detect", "file_chunks", "open_in_root", "read_file_in_root",
           "clean_name", "verify"]  # the stream helpers are re-exported for the callers' convenience
WHITEOUT_PREFIX = ".wh."
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read, not changed: open() modes are masked by it
OPAQUE = ".wh..wh..opq"


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
        self.euid, self.egid = os.geteuid(), os.getegid()
        # new entries belong to euid:egid unless a setgid directory passes its group down; our own
        # directories get their modes only at the end, so only a setgid root can do that
        self.owner_is_default = not os.fstat(self.rootfd).st_mode & stat.S_ISGID
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
            os.close(walk_open(self.rootfd, relpath.split("/"), os.O_RDONLY | os.O_DIRECTORY, create_dirs=True))
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
        """Give the entry its owner; False when nothing had to change (a new file is already ours)."""
        uid, gid = self._owner(member)
        if uid == -1 and gid == -1:
            return False
        if self.owner_is_default and uid == self.euid and gid == self.egid:
            return False
        try:
            if dir_fd is None:
                os.fchown(fd_or_name, uid, gid)
            else:
                os.chown(fd_or_name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            self.unmapped_owners += 1  # id outside our user namespace: stays ours
        return True

    def _xattrs(self, member):
        # an image must not steer the overlay mount (redirects, metacopy, opaque markers)
        return {name: value for name, value in member.xattrs.items()
                if not name.startswith(("trusted.overlay.", "user.overlay."))}

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
    def extract(self, stream):
        """Extract one layer from a LayerStream (or anything with read/write_to/skip)."""
        self.created = set()
        for member in tar.entries(stream):
            self._entry(stream, member)

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

    def _entry(self, stream, member):
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
                os.mkdir(base, 0o700, dir_fd=pfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode):
                    self._replace(pfd, base)
                    os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs[relpath] = member
            self.created.add(relpath)
            return
        self.created.add(relpath)
        # create first, clear the way only when the name is taken: one syscall less per entry
        if member.isreg():
            self._regular(stream, member, pfd, base)
        elif member.issym():
            self._create(pfd, base, lambda: os.symlink(member.linkname, base, dir_fd=pfd))
            self._chown(base, member, dir_fd=pfd)
            os.utime(base, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
            self._drop_parent()  # a new symlink may change how later names resolve
        elif member.isfifo():
            self._create(pfd, base, lambda: os.mkfifo(base, 0o600, dir_fd=pfd))
            self._finish_special(member, pfd, base)
        elif member.ischr() or member.isblk():
            if not self.real_root:
                self.skipped_devices.append(relpath)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            self._create(pfd, base, lambda: os.mknod(base, kind | 0o600, device, dir_fd=pfd))
            self._finish_special(member, pfd, base)
        else:
            raise UnsafeLayer(f"layer entry {member.name!r} has unsupported tar type {member.type.decode()!r}",
                              "the image is malformed")

    def _finish_special(self, member, pfd, base):
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._chown(base, member, dir_fd=pfd)
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(member.mode))
            os.utime(base, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(fd)

    def _create(self, pfd, base, make):
        try:
            return make()
        except FileExistsError:
            self._replace(pfd, base)
            return make()

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

    def _regular(self, stream, member, pfd, base):
        perm = stat.S_IMODE(member.mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self._create(pfd, base, lambda: os.open(base, flags, perm & 0o777, dir_fd=pfd))
        try:
            written = stream.write_to(fd, member.size)
            member.remaining = 0
            if written != member.size:
                raise ImageError(f"layer ends inside {member.name!r}", "the blob is truncated")
            chowned = self._chown(fd, member)
            # after chown, which clears setuid bits; not needed when open() already set the mode
            if chowned or perm & 0o7000 or perm & _UMASK:
                os.fchmod(fd, perm)
            if member.xattrs:
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
            self._create(pfd, base, lambda: os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd,
                                                    follow_symlinks=False))
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


def verify(stream, digest, diff_id, what):
    """After a stream is drained: raise DigestMismatch unless both digests match."""
    got_digest, got_diff = stream.digests()
    if digest and got_digest != digest:
        raise DigestMismatch(f"{what} hashes to {got_digest}, not {digest}",
                             "the registry sent corrupt or altered content; nothing was stored")
    if diff_id and got_diff != diff_id:
        raise DigestMismatch(f"{what} uncompresses to {got_diff}, but the image config says {diff_id}",
                             "the image is inconsistent; nothing was stored")
