"""Bundles: an image config turned into a runtime config.json, plus a rootfs.

config.json follows the image-spec's conversion rules (conversion.md): args = Entrypoint + Cmd,
env = Env (PATH and HOME supplied when missing, as docker does), cwd = WorkingDir, user = User
resolved through the image's own /etc/passwd and /etc/group (read without leaving the rootfs),
StopSignal, ExposedPorts, author/created/platform and Labels as annotations. The base is what
`runc spec` writes (and `runc spec --rootless` for the rootless variant: a user namespace mapping
the caller's subordinate ids, no cgroup limits, /sys bind-mounted read-only, devpts without gid=5),
with docker's default capability set. The result is checked against the vendored schema.

The rootfs is an overlay mount of the extracted layers (O(1) in the image size) with the bundle's
own upper and work dirs, or a flattened copy (rootless, or when overlay is unavailable).
"""
import ctypes
import errno
import os
import re

from crate_image.errors import ImageError
from crate_image.inroot import read_file_in_root
from crate_image.rootless import id_maps

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _mounts(rootless):
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": devpts if rootless else devpts + ["gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless:
        # a user namespace without its own network namespace may not mount sysfs: bind the host's
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    return mounts


# ------------------------------------------------------------------ users
def _parse_db(data):
    rows = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(user, rootfs):
    """(uid, gid, additional gids, home) for an image's User, read from rootfs/etc/{passwd,group}."""
    passwd = _parse_db(read_file_in_root(rootfs, "etc/passwd")) if rootfs else []
    groups = _parse_db(read_file_in_root(rootfs, "etc/group")) if rootfs else []
    user_part, _, group_part = (user or "").partition(":")
    uid, gid, home, name = 0, None, "/", "root"
    entry = None
    if user_part:
        for row in passwd:
            if len(row) >= 4 and (row[0] == user_part or (user_part.isdigit() and row[2] == user_part)):
                entry = row
                break
        if entry is None and not user_part.isdigit():
            raise ImageError(f"user {user_part!r} of the image is not in its /etc/passwd",
                             "use a numeric uid (--user UID[:GID]) or fix the image")
    else:
        entry = next((row for row in passwd if len(row) >= 4 and row[2] == "0"), None)
    if entry is not None:
        name, uid = entry[0], int(entry[2])
        gid = int(entry[3]) if entry[3].isdigit() else 0
        home = entry[5] if len(entry) > 5 and entry[5] else "/"
    else:
        uid = int(user_part) if user_part else 0  # no passwd entry (or no /etc/passwd at all)
        name = None
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            row = next((r for r in groups if len(r) >= 3 and r[0] == group_part), None)
            if row is None:
                raise ImageError(f"group {group_part!r} of the image is not in its /etc/group",
                                 "use a numeric gid or fix the image")
            gid = int(row[2])
        additional = []  # an explicit group replaces the supplementary groups (image-spec)
    else:
        gid = 0 if gid is None else gid
        additional = sorted({int(r[2]) for r in groups if len(r) >= 4 and r[2].isdigit() and name
                             and name in r[3].split(",") and int(r[2]) != gid})
    return uid, gid, additional, home


# ------------------------------------------------------------------ config.json
def runtime_config(image_config, rootfs=None, rootless=False, args=None, entrypoint=None, env=None,
                   user=None, workdir=None, hostname="crate", terminal=False, network_namespace=None,
                   mappings=None):
    """The runtime config.json for an image config (a dict with os, architecture, config, ...).
    mappings: (uid maps, gid maps) for the rootless variant; default rootless.id_maps() of the caller."""
    cfg = image_config.get("config") or {}
    ep = list(cfg.get("Entrypoint") or []) if entrypoint is None else list(entrypoint)
    cmd = list(cfg.get("Cmd") or []) if args is None else list(args)
    if entrypoint is not None and args is None:
        cmd = []  # docker: --entrypoint resets the image's Cmd
    argv = ep + cmd
    if not argv:
        raise ImageError("the image has neither Entrypoint nor Cmd", "give the command to run")
    environment = list(cfg.get("Env") or [])
    for item in env or []:
        key = item.split("=", 1)[0]
        environment = [e for e in environment if e.split("=", 1)[0] != key] + [item]
    uid, gid, additional, home = resolve_user(user if user is not None else cfg.get("User"), rootfs)
    keys = {e.split("=", 1)[0] for e in environment}
    if "PATH" not in keys:
        environment.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOME" not in keys:
        environment.append(f"HOME={home}")
    if terminal and "TERM" not in keys:
        environment.append("TERM=xterm")
    process_user = {"uid": uid, "gid": gid}
    # runc (and runtimes like it) refuse supplementary groups when started by a non-root user:
    # the rootless variant leaves them out rather than fail
    if additional and not rootless:
        process_user["additionalGids"] = additional
    if network_namespace is None:
        network_namespace = not rootless
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if network_namespace:
        namespaces.insert(1, {"type": "network"})
    if rootless:
        namespaces.append({"type": "user"})
    linux = {"namespaces": namespaces, "maskedPaths": list(MASKED), "readonlyPaths": list(READONLY)}
    if rootless:
        uids, gids = mappings or id_maps()
        linux["uidMappings"] = [m.as_spec() for m in uids]
        linux["gidMappings"] = [m.as_spec() for m in gids]
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    caps = list(DEFAULT_CAPS)
    config = {
        "ociVersion": "1.2.1",
        "process": {
            "terminal": bool(terminal), "user": process_user, "args": argv, "env": environment,
            "cwd": (workdir if workdir is not None else cfg.get("WorkingDir")) or "/",
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(rootless),
        "annotations": _annotations(image_config),
        "linux": linux,
    }
    if not config["process"]["cwd"].startswith("/"):
        config["process"]["cwd"] = "/" + config["process"]["cwd"]
    validate(config)
    return config


def _annotations(image_config):
    cfg = image_config.get("config") or {}
    out = {str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()}
    pairs = [("org.opencontainers.image.os", image_config.get("os")),
             ("org.opencontainers.image.architecture", image_config.get("architecture")),
             ("org.opencontainers.image.variant", image_config.get("variant")),
             ("org.opencontainers.image.os.version", image_config.get("os.version")),
             ("org.opencontainers.image.author", image_config.get("author")),
             ("org.opencontainers.image.created", image_config.get("created")),
             ("org.opencontainers.image.stopSignal", cfg.get("StopSignal")),
             ("org.opencontainers.image.exposedPorts", ",".join(sorted(cfg.get("ExposedPorts") or {})))]
    for key, value in pairs:
        if value:
            out[key] = str(value)  # the conversion's own keys win over same-named labels
    return out


def validate(config):
    """The generated config must be one a runtime accepts: crate-runc's own check (the type of
    every field a runtime reads, in well under a millisecond) and, only when that fails, the
    vendored runtime-spec schema (jsonschema costs ~35 ms to load) to name the field."""
    from crate_runc import spec
    try:
        spec.check(config)
        spec.check_semantics(config)
    except spec.ConfigError as e:
        problem = spec.schema_error(config) or str(e)
        raise ImageError(f"generated config.json is invalid: {problem}", "report this as a crate-image bug") from None


# ------------------------------------------------------------------ overlay rootfs
_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _mount(source, target, fstype, flags, data):
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _umount(target, flags=0):
    if _libc.umount2(target.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def mount_overlay(layer_dirs, upper, work, target, userxattr=False):
    """Mount layer_dirs (lowest first) under upper at target. Long lower lists use paths relative
    to the layers directory (the mount data is limited to a page)."""
    lowers = list(reversed(layer_dirs))
    extra = ",userxattr" if userxattr else ""
    data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}{extra}"
    cwd = None
    if len(data) >= 4000:
        base = os.path.dirname(lowers[0])
        if any(os.path.dirname(d) != base for d in lowers):
            raise ImageError("too many layers for one overlay mount", "make a flattened bundle (--copy)")
        data = f"lowerdir={':'.join(os.path.basename(d) for d in lowers)},upperdir={upper},workdir={work}{extra}"
        if len(data) >= 4000:
            raise ImageError(f"{len(lowers)} layers are too many for one overlay mount",
                             "make a flattened bundle (--copy)")
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(base)
    try:
        _mount("overlay", target, "overlay", 0, data)
    except OSError as e:
        raise ImageError(f"overlay mount on {target} failed: {e.strerror}",
                         "use a flattened bundle (--copy) where overlayfs is unavailable")
    finally:
        if cwd is not None:
            os.fchdir(cwd)
            os.close(cwd)


def is_mountpoint(path):
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                if mount_point == path:
                    return True
    except OSError:
        pass
    return False


def unmount(path):
    try:
        _umount(path)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise ImageError(f"{path} is busy", "stop the container that uses the bundle first")
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise

