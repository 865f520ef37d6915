"""A flattened copy of extracted layers: what an overlay mount of them shows, as plain files.

Layers are merged lowest first from their extracted directories (each layer is extracted only
once, at pull time): a 0:0 character device deletes the name below it, a directory marked
`<ns>.overlay.opaque=y` replaces the one below instead of merging with it, and a directory in a
higher layer takes that layer's owner, mode and times, exactly as overlayfs presents them. File
data is copied in the kernel (copy_file_range); hardlinks within a layer stay hardlinks.

The source layers are our own extraction; the target is created here, below a fresh directory.
Names are only ever opened relative to directory fds with O_NOFOLLOW, so symlinks inside the
image are copied, never followed.
"""
import errno
import os
import stat

from crate_image.inroot import open_in_root
from crate_image.layer import _remove_at

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 30


def _copy_data(src, dst, size):
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(src, dst, min(left, _COPY_CHUNK))
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.sendfile(dst, src, None, min(left, _COPY_CHUNK))
        if n == 0:
            break
        left -= n


class Flattener:
    def __init__(self, target, overlay_ns, real_root):
        self.target = target
        self.opaque_key = f"{overlay_ns}.overlay.opaque"
        self.real_root = real_root
        self.rootfd = os.open(target, _DIR_FLAGS)
        self.skipped_devices = []
        self.dirs = {}  # target-relative dir path -> (layer dir, stat) of the highest layer having it

    def close(self):
        os.close(self.rootfd)

    def _meta(self, fd, st, is_link=False, name=None, dir_fd=None):
        """Owner, mode, xattrs and times of st onto fd (or a symlink name in dir_fd)."""
        if is_link:
            try:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EINVAL):
                    raise
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
            return
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EINVAL):
                raise
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _xattrs(self, src, dst):
        try:
            names = os.listxattr(src)
        except OSError:
            return
        for name in names:
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            try:
                os.setxattr(dst, name, os.getxattr(src, name))
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                    raise

    def merge(self, layer_dir):
        """Apply one extracted layer on top of what the target holds."""
        src = os.open(layer_dir, _DIR_FLAGS)
        try:
            self.links = {}  # inode in this layer -> target-relative path of its first copy
            self.dirs[""] = (layer_dir, os.fstat(src))
            self._merge_dir(src, self.rootfd, "", layer_dir)
        finally:
            os.close(src)

    def finish(self):
        """Directory owners, modes, xattrs and times, deepest first, once every layer is in:
        a read-only directory of a lower layer must still take the entries of higher ones."""
        for path in sorted(self.dirs, key=lambda p: p.count("/") + bool(p), reverse=True):
            layer_dir, st = self.dirs[path]
            try:
                dfd = open_in_root(self.rootfd, path, _DIR_FLAGS) if path else os.dup(self.rootfd)
            except OSError:
                continue  # replaced by a non-directory higher up
            try:
                lfd = os.open(layer_dir, _DIR_FLAGS)
                try:
                    sfd = open_in_root(lfd, path, _DIR_FLAGS) if path else os.dup(lfd)
                finally:
                    os.close(lfd)
                try:
                    self._xattrs(sfd, dfd)
                finally:
                    os.close(sfd)
                self._meta(dfd, st)
            finally:
                os.close(dfd)

    def _merge_dir(self, src, dst, rel, layer_dir):
        for entry in os.scandir(src):
            name = entry.name
            path = f"{rel}/{name}" if rel else name
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                _remove_at(dst, name)  # a whiteout: nothing of that name below shows through
                continue
            if stat.S_ISDIR(mode):
                sub_src = os.open(name, _DIR_FLAGS, dir_fd=src)
                try:
                    opaque = _get(sub_src, self.opaque_key) == b"y"
                    try:
                        existing = os.stat(name, dir_fd=dst, follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        existing = None
                    if existing is not None and (opaque or not stat.S_ISDIR(existing)):
                        _remove_at(dst, name)
                        existing = None
                    if existing is None:
                        os.mkdir(name, 0o700, dir_fd=dst)
                    sub_dst = os.open(name, _DIR_FLAGS, dir_fd=dst)
                    try:
                        self._merge_dir(sub_src, sub_dst, path, layer_dir)
                    finally:
                        os.close(sub_dst)
                    self.dirs[path] = (layer_dir, st)  # the highest layer's attributes win
                finally:
                    os.close(sub_src)
                continue
            _remove_at(dst, name)
            if stat.S_ISREG(mode):
                key = st.st_ino
                if st.st_nlink > 1 and key in self.links:
                    first = self.links[key]
                    parent, _, base = first.rpartition("/")
                    pfd = open_in_root(self.rootfd, parent, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.link(base, name, src_dir_fd=pfd, dst_dir_fd=dst, follow_symlinks=False)
                    finally:
                        os.close(pfd)
                    continue
                if st.st_nlink > 1:
                    self.links[key] = path
                sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
                try:
                    dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=dst)
                    try:
                        _copy_data(sfd, dfd, st.st_size)
                        self._meta(dfd, st)
                        self._xattrs(sfd, dfd)
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
                self._meta(None, st, is_link=True, name=name, dir_fd=dst)
            elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                if not stat.S_ISFIFO(mode) and not self.real_root:
                    self.skipped_devices.append(path)
                    continue
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst)
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
                try:
                    try:
                        os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
                    except OSError as e:
                        if e.errno not in (errno.EPERM, errno.EINVAL):
                            raise
                    os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode))
                    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
                finally:
                    os.close(fd)


def _get(fd, key):
    try:
        return os.getxattr(fd, key)
    except OSError:
        return None


def flatten(layer_dirs, target, overlay_ns, real_root):
    """Merge extracted layers (lowest first) into the existing directory target."""
    f = Flattener(target, overlay_ns, real_root)
    try:
        for layer_dir in layer_dirs:
            f.merge(layer_dir)
        f.finish()
    finally:
        f.close()
    return f.skipped_devices
