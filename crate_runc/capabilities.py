"""Capability names and applying the five sets (bounding, effective, permitted, inheritable, ambient)."""
from crate_runc import linux

# index = capability number (include/uapi/linux/capability.h)
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: i for i, name in enumerate(NAMES)}
SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def mask(names, unavailable):
    """Bit mask of capability names. A name no kernel knows is an error (the runtime-spec: a value
    that cannot be mapped to a kernel interface); one newer than this kernel is collected in
    `unavailable` and left out, as runc does."""
    bits = 0
    for name in names or ():
        number = NUMBERS.get(name)
        if number is None:
            from crate_runc import Error
            raise Error(f"unknown capability {name!r} in process.capabilities; names look like CAP_NET_RAW")
        if number > linux.last_cap():
            unavailable.add(name)
        else:
            bits |= 1 << number
    return bits


def masks(capabilities):
    """({set name: mask}, names this kernel lacks) for a process.capabilities object; no object
    means no capabilities at all (runc)."""
    unavailable = set()
    result = {s: mask((capabilities or {}).get(s), unavailable) for s in SETS}
    return result, unavailable


def drop_bounding(keep):
    """Drop every capability not in `keep` from the bounding set (needs CAP_SETPCAP)."""
    for number in range(linux.last_cap() + 1):
        if not keep & (1 << number) and linux.prctl(linux.PR_CAPBSET_READ, number) == 1:
            linux.prctl(linux.PR_CAPBSET_DROP, number)


def apply(sets):
    """Set effective/permitted/inheritable, then raise the ambient ones (after the uid change)."""
    _, available, _ = linux.capget()
    # asking for a capability this process does not hold fails capset with EPERM; like an
    # unknown name, it cannot be granted, so leave it out instead of failing the container
    permitted = sets["permitted"] & available
    linux.capset(sets["effective"] & permitted, permitted, sets["inheritable"] & available)
    if sets["ambient"]:
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
        for number in range(linux.last_cap() + 1):
            if sets["ambient"] & (1 << number) & permitted & sets["inheritable"]:
                linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, number)
