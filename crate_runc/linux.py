"""Linux syscalls the os module lacks, behind plain functions (the only ctypes in the core).

Every wrapper raises OSError(errno, "<call> <what>: <strerror>") so callers can report one line.
Constants are the kernel's numbers (include/uapi/linux/*.h).
"""
import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_MACHINE = os.uname().machine
# syscall numbers differ per architecture: x86_64 has its own table, arm64/riscv use the generic one
_NR = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "close_range": 436, "pidfd_open": 434, "pidfd_getfd": 438,
               "clone3": 435},
    "generic": {"pivot_root": 41, "keyctl": 219, "close_range": 436, "pidfd_open": 434, "pidfd_getfd": 438,
                "clone3": 435},
}["x86_64" if _MACHINE == "x86_64" else "generic"]

# clone/unshare/setns flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# prctl options
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

CLOSE_RANGE_CLOEXEC = 4
KEYCTL_JOIN_SESSION_KEYRING = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.personality.argtypes = [ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(result, call, what=""):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call} {what}: {os.strerror(err)}".replace("  ", " "))
    return result


def _b(value):
    return None if value is None else os.fsencode(value)


def mount(source, target, fstype, flags=0, data=None):
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount(target, flags=0):
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root, put_old):
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def unshare(flags):
    _check(_libc.unshare(flags), "unshare", hex(flags))


def setns(fd, nstype=0):
    _check(_libc.setns(fd, nstype), "setns", f"fd {fd}")


def sethostname(name):
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname", name)


def setdomainname(name):
    data = name.encode()
    _check(_libc.setdomainname(data, len(data)), "setdomainname", name)


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", str(option))


def personality(persona):
    return _check(_libc.personality(persona), "personality", hex(persona))


def join_session_keyring(name=None):
    _check(_libc.syscall(_NR["keyctl"], KEYCTL_JOIN_SESSION_KEYRING, _b(name)), "keyctl join", name or "")


def cloexec_from(first_fd):
    """Mark every fd >= first_fd close-on-exec (so exec drops them, runc's way of closing fds)."""
    if _libc.syscall(_NR["close_range"], first_fd, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0:
        return
    import fcntl  # kernels before 5.11: walk /proc/self/fd
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first_fd:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            except OSError:
                pass


def pidfd_getfd(pid, target_fd):
    """A copy of process `pid`'s fd `target_fd` (needs ptrace rights over it; kernel 5.6+)."""
    pidfd = _check(_libc.syscall(_NR["pidfd_open"], pid, 0), "pidfd_open", str(pid))
    try:
        return _check(_libc.syscall(_NR["pidfd_getfd"], pidfd, target_fd, 0), "pidfd_getfd", str(target_fd))
    finally:
        os.close(pidfd)


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                                      "stack", "stack_size", "tls", "set_tid", "set_tid_size",
                                                      "cgroup")]


_CLONE_INTO_CGROUP = 0x200000000
_python = ctypes.PyDLL(None, use_errno=True)  # calls that keep the GIL, like os.fork's own fork()
_python.syscall.restype = ctypes.c_long


def clone(namespace_flags=0, cgroup_dir_fd=None):
    """os.fork() through clone3: the child starts in new namespaces (CLONE_NEW* flags) and, given
    a cgroup2 directory fd, in that cgroup (CLONE_INTO_CGROUP, Linux 5.7): no migration, so none
    of the global lock and RCU grace period (~10 ms here) that moving a process costs. Python's
    own fork bookkeeping runs around it as in os.fork; the caller must be single-threaded.
    OSError (ENOSYS, EINVAL...) when the kernel cannot: fall back to os.fork and unshare."""
    flags = namespace_flags
    if cgroup_dir_fd is not None:
        flags |= _CLONE_INTO_CGROUP
    args = _CloneArgs(flags=flags, exit_signal=17, cgroup=cgroup_dir_fd or 0)  # SIGCHLD
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _python.syscall(_NR["clone3"], ctypes.byref(args), ctypes.sizeof(args))
    err = ctypes.get_errno()
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective, permitted, inheritable):
    """Set this thread's capability sets from 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def capget():
    """(effective, permitted, inheritable) masks of this thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return tuple(data[0].__getattribute__(f) | (data[1].__getattribute__(f) << 32)
                 for f in ("effective", "permitted", "inheritable"))


_last_cap = []


def last_cap():
    """The highest capability number this kernel knows (read once)."""
    if not _last_cap:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last_cap.append(int(f.read()))
        except OSError:
            _last_cap.append(40)
    return _last_cap[0]


# network interface flags through ioctl on a datagram socket (bringing up lo in a new netns)
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class _IfReq(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("flags", ctypes.c_short), ("pad", ctypes.c_char * 22)]


def link_up(name="lo"):
    fd = _check(_libc.socket(2, 2 | 0o2000000, 0), "socket", "AF_INET")  # SOCK_DGRAM|SOCK_CLOEXEC
    try:
        req = _IfReq(name.encode(), 0)
        _check(_libc.ioctl(fd, _SIOCGIFFLAGS, ctypes.byref(req)), "ioctl SIOCGIFFLAGS", name)
        req.flags |= _IFF_UP
        _check(_libc.ioctl(fd, _SIOCSIFFLAGS, ctypes.byref(req)), "ioctl SIOCSIFFLAGS", name)
    finally:
        os.close(fd)
