"""Paths inside a root directory: open anything below it as if it were '/', never leaving it.

openat2(RESOLVE_IN_ROOT) does it in one syscall (Linux 5.6+); where it is missing or filtered,
a component-by-component walk resolves symlinks inside the root by hand. Used by layer extraction
and to read an image's /etc/passwd without following its symlinks out of the rootfs.
"""
import ctypes
import errno
import os
import stat

from crate_image.errors import UnsafeLayer

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


def walk_open(rootfd, parts, flags, depth=0, create_dirs=False):
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
    return walk_open(rootfd, relpath.split("/") if relpath else [], flags)


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
