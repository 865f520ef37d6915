"""The container's root filesystem: mounts in order, /dev, pivot_root, masked and read-only paths.

Runs in the container init, inside its new mount namespace, in runc's order: make / a slave,
bind the rootfs onto itself, mount config.mounts (every destination resolved inside the rootfs,
symlinks included), create devices, then pivot_root (or MS_MOVE/chroot); masked and read-only
paths, and a read-only root, come after the pivot.
"""
import os
import stat

from crate_runc import Error, linux

# option -> (clear the flag?, flag), as mount(8) and runc read them
FLAG_OPTIONS = {
    "async": (True, linux.MS_SYNCHRONOUS), "atime": (True, linux.MS_NOATIME),
    "bind": (False, linux.MS_BIND), "defaults": (False, 0), "dev": (True, linux.MS_NODEV),
    "diratime": (True, linux.MS_NODIRATIME), "dirsync": (False, linux.MS_DIRSYNC),
    "exec": (True, linux.MS_NOEXEC), "iversion": (False, 1 << 23), "lazytime": (False, linux.MS_LAZYTIME),
    "loud": (True, linux.MS_SILENT), "mand": (False, linux.MS_MANDLOCK), "noatime": (False, linux.MS_NOATIME),
    "nodev": (False, linux.MS_NODEV), "nodiratime": (False, linux.MS_NODIRATIME),
    "noexec": (False, linux.MS_NOEXEC), "noiversion": (True, 1 << 23), "nolazytime": (True, linux.MS_LAZYTIME),
    "nomand": (True, linux.MS_MANDLOCK), "norelatime": (True, linux.MS_RELATIME),
    "nostrictatime": (True, linux.MS_STRICTATIME), "nosuid": (False, linux.MS_NOSUID),
    "nosymfollow": (False, linux.MS_NOSYMFOLLOW), "rbind": (False, linux.MS_BIND | linux.MS_REC),
    "relatime": (False, linux.MS_RELATIME), "remount": (False, linux.MS_REMOUNT), "ro": (False, linux.MS_RDONLY),
    "rw": (True, linux.MS_RDONLY), "silent": (False, linux.MS_SILENT),
    "strictatime": (False, linux.MS_STRICTATIME), "suid": (True, linux.MS_NOSUID),
    "sync": (False, linux.MS_SYNCHRONOUS),
}
PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
# flags an unprivileged mount namespace may not clear on remount (statvfs f_flag -> MS_*)
LOCKED_FLAGS = ((1, linux.MS_RDONLY), (2, linux.MS_NOSUID), (4, linux.MS_NODEV), (8, linux.MS_NOEXEC),
                (1024, linux.MS_NOATIME), (2048, linux.MS_NODIRATIME), (4096, linux.MS_RELATIME))
DEFAULT_DEVICES = (  # path, type, major, minor
    ("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7),
    ("/dev/random", "c", 1, 8), ("/dev/urandom", "c", 1, 9), ("/dev/tty", "c", 5, 0),
)
V1_CONTROLLERS = frozenset(("cpuset", "cpu", "cpuacct", "io", "blkio", "memory", "devices", "freezer",
                            "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"))
DEV_SYMLINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))


def parse_options(options):
    """-> (flags, [propagation flags], data string, set of crate/runc extensions)"""
    flags, propagation, data, extensions = 0, [], [], set()
    for option in options or ():
        if option in FLAG_OPTIONS:
            clear, flag = FLAG_OPTIONS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in PROPAGATION:
            propagation.append(PROPAGATION[option])
        elif option in ("tmpcopyup",):
            extensions.add(option)
        else:
            data.append(option)
    return flags, propagation, ",".join(data), extensions


def secure_join(root, unsafe_path):
    """`unsafe_path` resolved inside `root`: '..' stops at root and symlinks are followed as if
    root were '/', so no configured path can reach outside the container's root."""
    pending = [p for p in unsafe_path.split("/") if p and p != "."]
    resolved = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise Error(f"too many symlinks resolving {unsafe_path!r} in the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p and p != "."] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _mkdirs(path):
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except FileExistsError:
        raise Error(f"cannot mount on {path}: it exists and is not a directory") from None


def _touch(path):
    _mkdirs(os.path.dirname(path))
    if not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o755))


def _locked_flags(path):
    try:
        current = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(ms for st_flag, ms in LOCKED_FLAGS if current & st_flag)


def remount(path, flags, in_userns):
    extra = _locked_flags(path) if in_userns else 0
    try:
        linux.mount(None, path, None, flags | linux.MS_REMOUNT | extra)
    except PermissionError:
        # a remount may not clear flags the mount was created with in a less privileged namespace
        linux.mount(None, path, None, flags | linux.MS_REMOUNT | _locked_flags(path))


class RootfsBuilder:
    """Builds the rootfs of one container (called in its init process)."""

    def __init__(self, config, rootfs, bundle, in_userns, cgroup_ns):
        self.config = config
        self.rootfs = rootfs
        self.bundle = bundle
        self.in_userns = in_userns
        self.cgroup_ns = cgroup_ns
        self.dev_is_bind = False

    def prepare(self):
        linux_cfg = self.config.get("linux", {})
        # our view of the host's mounts: slave by default so nothing we mount leaks back, unless
        # the config asks for another propagation
        propagation = PROPAGATION.get(linux_cfg.get("rootfsPropagation", ""), linux.MS_SLAVE | linux.MS_REC)
        linux.mount(None, "/", None, propagation)
        self._make_parent_private(propagation)
        linux.mount(self.rootfs, self.rootfs, "bind", linux.MS_BIND | linux.MS_REC)
        for index, m in enumerate(self.config.get("mounts", [])):
            try:
                self.mount(m)
            except OSError as e:
                raise Error(f"mounts[{index}] ({m.get('type', 'bind')} on {m['destination']}): "
                            f"{e.strerror or e}") from None
        if not self.dev_is_bind:
            self.create_devices(linux_cfg.get("devices", []))
            self._dev_symlinks()

    def _make_parent_private(self, propagation):
        """Make the mount holding the rootfs private (slave if asked for): pivot_root refuses a
        shared parent, and a bind of the rootfs under a shared or unbindable parent would leak
        to the host or fail. mount(2) says EINVAL for a path that is not a mount point, so walk
        up to the one that is (runc's way)."""
        flags = linux.MS_SLAVE if propagation & linux.MS_SLAVE else linux.MS_PRIVATE
        path = self.rootfs
        while True:
            try:
                linux.mount(None, path, None, flags)
                return
            except OSError as e:
                if e.errno != 22 or path == "/":
                    raise
                path = os.path.dirname(path)

    # -- config.mounts
    def mount(self, m):
        kind = m.get("type", "")
        options = m.get("options", [])
        flags, propagation, data, extensions = parse_options(options)
        dest = secure_join(self.rootfs, m["destination"])
        if kind == "bind" or flags & linux.MS_BIND:
            self._bind(m, dest, flags, propagation)
            if m["destination"].rstrip("/") == "/dev":
                self.dev_is_bind = True
        elif kind == "cgroup":
            self._cgroup(m, dest, flags)
        else:
            self._filesystem(m, kind, dest, flags, data, extensions)
        for p in propagation:
            linux.mount(None, dest, None, p)

    def _bind(self, m, dest, flags, propagation):
        source = m.get("source", "")
        if not source.startswith("/"):
            source = os.path.join(self.bundle, source)
        try:
            is_dir = os.path.isdir(source)
        except OSError:
            is_dir = False
        if not os.path.exists(source):
            raise Error(f"bind mount source {source!r} does not exist")
        if is_dir:
            _mkdirs(dest)
        else:
            _touch(dest)
        linux.mount(source, dest, "bind", linux.MS_BIND | (flags & linux.MS_REC))
        remount_flags = flags & ~(linux.MS_BIND | linux.MS_REC | linux.MS_REMOUNT)
        if remount_flags:
            remount(dest, linux.MS_BIND | remount_flags, self.in_userns)

    def _filesystem(self, m, kind, dest, flags, data, extensions):
        source = m.get("source") or kind
        if os.path.lexists(dest) and not os.path.isdir(dest):
            raise Error(f"cannot mount {kind} on {m['destination']}: it exists and is not a directory")
        _mkdirs(dest)
        if kind == "proc" and os.path.islink(dest):
            raise Error(f"refusing to mount proc on symlink {m['destination']}")
        if kind == "tmpfs":
            flags &= ~linux.MS_RDONLY  # made read-only after the pivot: later mounts may nest in it
        if "tmpcopyup" in extensions:
            return self._tmpfs_copyup(source, dest, flags, data)
        try:
            linux.mount(source, dest, kind, flags & ~linux.MS_REMOUNT, data or None)
        except OSError as e:
            if kind == "devpts" and e.errno == 22 and self.in_userns and "gid=" in data:
                # gid=5 (tty) is not mapped in a rootless user namespace and the kernel refuses
                # it: mount without it (crun does the same)
                data = ",".join(o for o in data.split(",") if not o.startswith("gid="))
                linux.mount(source, dest, kind, flags & ~linux.MS_REMOUNT, data or None)
                return
            # in a user namespace without its own network or ipc namespace the kernel refuses
            # sysfs and mqueue: bind the host's instance instead, as runc does when rootless
            fallback = {"sysfs": "/sys", "mqueue": "/dev/mqueue"}.get(kind)
            if not (e.errno == 1 and self.in_userns and fallback and os.path.isdir(fallback)):
                raise
            linux.mount(fallback, dest, "bind", linux.MS_BIND | linux.MS_REC)
            if flags:
                remount(dest, linux.MS_BIND | flags, True)

    def _tmpfs_copyup(self, source, dest, flags, data):
        import shutil
        import tempfile
        staging = tempfile.mkdtemp(prefix="crate-copyup-")
        try:
            linux.mount(source, staging, "tmpfs", flags, data or None)
            for name in os.listdir(dest):
                src = os.path.join(dest, name)
                if os.path.isdir(src) and not os.path.islink(src):
                    shutil.copytree(src, os.path.join(staging, name), symlinks=True)
                else:
                    shutil.copy2(src, os.path.join(staging, name), follow_symlinks=False)
            linux.mount(staging, dest, None, linux.MS_MOVE)
        finally:
            os.rmdir(staging)

    def _cgroup(self, m, dest, flags):
        _mkdirs(dest)
        hierarchies = cgroup_hierarchies()
        if "" in hierarchies and len(hierarchies) == 1:  # cgroup v2 only
            if self.cgroup_ns:
                linux.mount("cgroup2", dest, "cgroup2", flags | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
            else:
                linux.mount(hierarchies[""], dest, "bind", linux.MS_BIND | linux.MS_REC)
                remount(dest, linux.MS_BIND | flags, self.in_userns)
            return
        base = linux.MS_NOEXEC | linux.MS_NOSUID | linux.MS_NODEV
        linux.mount("tmpfs", dest, "tmpfs", base, "mode=755")
        for name, host_dir in hierarchies.items():
            if name == "":  # hybrid hosts: runc shows only the v1 hierarchies
                continue
            target = os.path.join(dest, name)
            os.makedirs(target, exist_ok=True)
            if self.cgroup_ns:
                options = "name=systemd" if name == "systemd" else name
                linux.mount("cgroup", target, "cgroup", base | (flags & linux.MS_RDONLY), options)
            else:
                linux.mount(host_dir, target, "bind", linux.MS_BIND | linux.MS_REC)
                remount(target, linux.MS_BIND | base | (flags & linux.MS_RDONLY), self.in_userns)
            if "," in name:
                for alias in name.split(","):
                    if not os.path.lexists(os.path.join(dest, alias)):
                        os.symlink(name, os.path.join(dest, alias))
        if flags & linux.MS_RDONLY:
            linux.mount(None, dest, None, base | linux.MS_RDONLY | linux.MS_BIND | linux.MS_REMOUNT)

    # -- /dev
    def create_devices(self, devices):
        old_umask = os.umask(0)
        try:
            configured = {d["path"] for d in devices}
            for path, kind, major, minor in DEFAULT_DEVICES:
                if path not in configured:
                    self._device({"path": path, "type": kind, "major": major, "minor": minor, "fileMode": 0o666})
            for device in devices:
                self._device(device)
        finally:
            os.umask(old_umask)

    def _device(self, device):
        dest = secure_join(self.rootfs, device["path"])
        kind = device["type"]
        if kind not in ("c", "u", "b", "p"):
            raise Error(f"device {device['path']}: unknown type {kind!r} (use c, b, u or p)")
        if self.in_userns:
            # mknod is not allowed in a user namespace: bind the host's node instead
            _touch(dest)
            linux.mount(device["path"], dest, "bind", linux.MS_BIND)
            return
        _mkdirs(os.path.dirname(dest))
        if os.path.lexists(dest):
            os.unlink(dest)
        mode = device.get("fileMode", 0o666) & 0o7777
        mode |= {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
        os.mknod(dest, mode, os.makedev(device.get("major", 0), device.get("minor", 0)))
        os.chown(dest, device.get("uid", 0), device.get("gid", 0))

    def _dev_symlinks(self):
        dev = secure_join(self.rootfs, "/dev")
        links = list(DEV_SYMLINKS)
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        for target, path in links + [("pts/ptmx", "/dev/ptmx")]:
            link = os.path.join(dev, path[len("/dev/"):])
            if path == "/dev/ptmx" and os.path.lexists(link):
                os.unlink(link)
            try:
                os.symlink(target, link)
            except FileExistsError:
                pass


def cgroup_hierarchies():
    """{hierarchy: host directory of this process's cgroup in it}; v1 hierarchies are keyed by
    their mount point's name (cpu,cpuacct, memory, systemd, ...), the v2 hierarchy by ''.

    Read in the init after it joined the container's cgroups, so the paths are the container's.
    """
    memberships = {}  # "cpu,cpuacct" / "name=systemd" / "" (v2) -> cgroup path
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            memberships[controllers] = path
    result = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, root, mountpoint = fields[sep + 1], fields[3], fields[4]
            if fstype == "cgroup2":
                membership, name = "", ""
            elif fstype == "cgroup":
                options = fields[sep + 3].split(",")
                named = [o for o in options if o.startswith("name=")]
                membership = named[0] if named else ",".join(o for o in options if o in V1_CONTROLLERS)
                name = os.path.basename(mountpoint)
            else:
                continue
            if membership not in memberships or name in result:
                continue
            path = memberships[membership]
            relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
            result[name] = os.path.normpath(os.path.join(mountpoint, relative))
    return result


def pivot(rootfs, has_mount_ns, no_pivot):
    """Make `rootfs` the root: pivot_root (runc's fchdir trick, no put_old dir), or MS_MOVE with
    --no-pivot, or plain chroot without a mount namespace."""
    if not has_mount_ns:
        os.chroot(rootfs)
    elif no_pivot:
        os.chdir(rootfs)
        linux.mount(rootfs, "/", None, linux.MS_MOVE)
        os.chroot(".")
    else:
        old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new_root)
            linux.pivot_root(".", ".")
            os.fchdir(old_root)
            # the old root is stacked under the new one: keep its unmount from propagating to
            # the host, then detach it
            linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
            linux.umount(".", linux.MNT_DETACH)
        finally:
            os.close(old_root)
            os.close(new_root)
    os.chdir("/")


def finalize(config, in_userns):
    """After the pivot: root propagation, read-only tmpfs mounts and /dev, masked and read-only
    paths, read-only root."""
    linux_cfg = config.get("linux", {})
    propagation = PROPAGATION.get(linux_cfg.get("rootfsPropagation", ""), 0)
    if propagation and not propagation & (linux.MS_PRIVATE | linux.MS_SLAVE):
        # applied to the new root, now that it is "/": doing it before the pivot would make
        # the bind mount of the rootfs propagate to the host (runc 1.2 does the same)
        linux.mount(None, "/", None, propagation)
    for m in config.get("mounts", []):
        if "ro" in m.get("options", []) and (m.get("type") == "tmpfs" or m["destination"].rstrip("/") == "/dev"):
            path = secure_join("/", m["destination"])
            flags = parse_options(m["options"])[0] & ~(linux.MS_BIND | linux.MS_REC | linux.MS_REMOUNT)
            remount(path, flags | linux.MS_RDONLY, in_userns)
    for path in linux_cfg.get("readonlyPaths", []):
        try:
            linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
        except FileNotFoundError:
            continue
        remount(path, linux.MS_BIND | linux.MS_RDONLY | linux.MS_REC, in_userns)
    for path in linux_cfg.get("maskedPaths", []):
        try:
            linux.mount("/dev/null", path, None, linux.MS_BIND)
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # a directory is masked with an empty read-only tmpfs
            linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)
    if config.get("root", {}).get("readonly"):
        remount("/", linux.MS_BIND | linux.MS_RDONLY, in_userns)
