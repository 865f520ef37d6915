"""seccomp filters from config.json's linux.seccomp, built with libseccomp as runc does.

Two phases, because the container's init loses the host's libraries at pivot_root:

    prepare(seccomp) -> Filter | None
        Before pivot_root (in the init, or in the parent before forking). dlopens libseccomp
        (ctypes is imported here, not at module import), validates linux.seccomp (SeccompError
        naming the JSON field, e.g. linux.seccomp.syscalls[3].action), builds the filter, exports it
        as classic BPF and prepends runc's -ENOSYS stub: syscalls newer than every syscall the
        profile names get ENOSYS instead of the default action, so libcs fall back (clone3 ...).
        Unknown syscall names are skipped, as runc does. None when seccomp is disabled (no
        defaultAction and no syscalls).

    Filter.load() -> int | None
        The very last step before execve: one prctl(2)/seccomp(2) call, no library needed.
        Without no_new_privileges the kernel requires CAP_SYS_ADMIN, so (like runc) load it
        before dropping capabilities when process.noNewPrivileges is false, and after everything
        else when it is true. Returns the seccomp listener fd when a rule uses SCMP_ACT_NOTIFY
        (else None): hand it to the parent (SCM_RIGHTS or pidfd_getfd), wait for the parent's
        go-ahead, close it, then execve.

    send_to_listener(seccomp, fd, pid, state)
        In the parent (crate-runc), as runc: connect to linux.seccomp.listenerPath and send the
        container process state (JSON) with the listener fd attached. state is the OCI state of
        the container ("status": "creating" for the init).

    features() -> dict      the "seccomp" object of `crate-runc features` (runc 1.2's shape)

Flags: SECCOMP_FILTER_FLAG_LOG and SECCOMP_FILTER_FLAG_SPEC_ALLOW are passed to seccomp(2);
SECCOMP_FILTER_FLAG_TSYNC is accepted and ignored (runc 1.2 semantics; runc 1.1 refused any flag).
No flags at all means none are set, as in runc 1.1.
"""
import os

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry a 16-bit return value
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_NOTIFY = 0x7fc00000
_ACT_TRACE = 0x7ff00000
_ACT_LOG = 0x7ffc0000
_ACT_ALLOW = 0x7fff0000
ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,        # runc maps plain KILL to KILL_THREAD
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_NOTIFY": _ACT_NOTIFY,
}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
ARCHES = {"SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32",
          "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips",
          "SCMP_ARCH_MIPS64": "mips64", "SCMP_ARCH_MIPS64N32": "mips64n32", "SCMP_ARCH_MIPSEL": "mipsel",
          "SCMP_ARCH_MIPSEL64": "mipsel64", "SCMP_ARCH_MIPSEL64N32": "mipsel64n32", "SCMP_ARCH_PPC": "ppc",
          "SCMP_ARCH_PPC64": "ppc64", "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_RISCV64": "riscv64",
          "SCMP_ARCH_S390": "s390", "SCMP_ARCH_S390X": "s390x"}
_FLAG_TSYNC = "SECCOMP_FILTER_FLAG_TSYNC"
_FLAG_SPEC_ALLOW = "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
_FLAG_LOG = "SECCOMP_FILTER_FLAG_LOG"
KNOWN_FLAGS = [_FLAG_TSYNC, _FLAG_SPEC_ALLOW, _FLAG_LOG]
# seccomp(2) filter flags
_SECCOMP_FILTER_FLAG_LOG = 1 << 1
_SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
# libseccomp filter attributes (enum scmp_filter_attr)
_ATTR_CTL_NNP, _ATTR_CTL_LOG, _ATTR_CTL_SSB = 3, 6, 7
_EEXIST = 17
_ENOSYS = 38
_EPERM = 1
_BPF_MAXINSNS = 4096
_MACHINE = os.uname().machine
_NR_SECCOMP = {"x86_64": 317, "i386": 354, "i686": 354, "ppc64le": 358, "ppc64": 358, "s390x": 348,
               "armv7l": 383, "armv6l": 383}.get(_MACHINE, 277)   # 277: arm64/riscv64 generic table
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _SECCOMP_SET_MODE_FILTER = 22, 2, 1

# AUDIT_ARCH_* values the kernel puts in seccomp_data.arch; libseccomp's tokens are the same except
# x32, which runs on AUDIT_ARCH_X86_64 with bit 30 set in the syscall number
_AUDIT_X86_64 = 0xc000003e
_SCMP_X32 = 0x4000003e
_AUDIT_S390, _AUDIT_S390X = 0x00000016, 0x80000016


class SeccompError(Exception):
    """A seccomp problem, as one line naming the JSON field or the fix."""


# ---------------------------------------------------------------- libseccomp binding (private)
_lib = None


def _libseccomp():
    """dlopen libseccomp once and declare the functions used; SeccompError if it is missing."""
    global _lib
    if _lib is not None:
        return _lib
    import ctypes
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise SeccompError("libseccomp.so.2 is not installed: apt-get install libseccomp2 "
                           "(or drop linux.seccomp from the config)") from None
    c = ctypes
    lib.seccomp_init.argtypes = [c.c_uint32]
    lib.seccomp_init.restype = c.c_void_p
    lib.seccomp_release.argtypes = [c.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [c.c_char_p]
    lib.seccomp_arch_resolve_name.restype = c.c_uint32
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = c.c_uint32
    lib.seccomp_arch_add.argtypes = [c.c_void_p, c.c_uint32]
    lib.seccomp_arch_add.restype = c.c_int
    lib.seccomp_attr_set.argtypes = [c.c_void_p, c.c_int, c.c_uint32]
    lib.seccomp_attr_set.restype = c.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [c.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = c.c_int
    lib.seccomp_syscall_resolve_name_arch.argtypes = [c.c_uint32, c.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = c.c_int
    lib.seccomp_rule_add_array.argtypes = [c.c_void_p, c.c_uint32, c.c_int, c.c_uint, c.c_void_p]
    lib.seccomp_rule_add_array.restype = c.c_int
    lib.seccomp_export_bpf.argtypes = [c.c_void_p, c.c_int]
    lib.seccomp_export_bpf.restype = c.c_int
    lib.seccomp_api_get.argtypes = []
    lib.seccomp_api_get.restype = c.c_uint

    class ArgCmp(c.Structure):
        _fields_ = [("arg", c.c_uint), ("op", c.c_int), ("datum_a", c.c_uint64), ("datum_b", c.c_uint64)]

    class Version(c.Structure):
        _fields_ = [("major", c.c_uint), ("minor", c.c_uint), ("micro", c.c_uint)]

    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = c.POINTER(Version)
    lib.ArgCmp = ArgCmp
    _lib = lib
    return lib


def library_version():
    """libseccomp's version as "2.5.4" (for the features annotation), or None without it."""
    try:
        v = _libseccomp().seccomp_version().contents
    except SeccompError:
        return None
    return f"{v.major}.{v.minor}.{v.micro}"


# ---------------------------------------------------------------- validation
def _uint(value, where, bits):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise SeccompError(f"{where} must be an integer in [0, {(1 << bits) - 1}], got {value!r}")
    return value


def _action(name, errno_ret, where):
    if name not in ACTIONS:
        raise SeccompError(f"{where}: unknown action {name!r}; use one of {', '.join(sorted(ACTIONS))}")
    value = ACTIONS[name]
    if value in (_ACT_ERRNO, _ACT_TRACE):
        # errnoRet defaults to EPERM; other actions ignore it, as runc does
        value |= (_EPERM if errno_ret is None else errno_ret) & 0xffff
    return value


class _Rule:
    __slots__ = ("name", "action", "args", "where")

    def __init__(self, name, action, args, where):
        self.name, self.action, self.args, self.where = name, action, args, where


def _parse(seccomp):
    where = "linux.seccomp"
    if not isinstance(seccomp, dict):
        raise SeccompError(f"{where} must be an object, got {seccomp!r}")
    default_name = seccomp.get("defaultAction") or ""
    default_errno = seccomp.get("defaultErrnoRet")
    if default_errno is not None:
        _uint(default_errno, where + ".defaultErrnoRet", 16)
    default = _action(default_name, default_errno, where + ".defaultAction")
    if default == _ACT_NOTIFY:
        raise SeccompError(f"{where}.defaultAction cannot be SCMP_ACT_NOTIFY (the init's own writes would "
                           "wait for the agent forever); notify only chosen syscalls")
    arches = []
    for i, arch in enumerate(seccomp.get("architectures") or []):
        if arch not in ARCHES:
            raise SeccompError(f"{where}.architectures[{i}]: unknown architecture {arch!r}; "
                               f"use one of {', '.join(sorted(ARCHES))}")
        arches.append(ARCHES[arch])
    flags = 0
    for i, flag in enumerate(seccomp.get("flags") or []):
        if flag not in KNOWN_FLAGS:
            raise SeccompError(f"{where}.flags[{i}]: unknown flag {flag!r}; use one of {', '.join(KNOWN_FLAGS)}")
        if flag != _FLAG_TSYNC and flag not in _supported_flags():
            raise SeccompError(f"{where}.flags[{i}]: {flag} is not supported by this kernel or libseccomp; "
                               "remove it")
        flags |= {_FLAG_TSYNC: 0, _FLAG_LOG: _SECCOMP_FILTER_FLAG_LOG,
                  _FLAG_SPEC_ALLOW: _SECCOMP_FILTER_FLAG_SPEC_ALLOW}[flag]
    rules = []
    syscalls = seccomp.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise SeccompError(f"{where}.syscalls must be a list, got {syscalls!r}")
    for i, call in enumerate(syscalls):
        at = f"{where}.syscalls[{i}]"
        if not isinstance(call, dict):
            raise SeccompError(f"{at} must be an object, got {call!r}")
        errno_ret = call.get("errnoRet")
        if errno_ret is not None:
            _uint(errno_ret, at + ".errnoRet", 16)
        action = _action(call.get("action") or "", errno_ret, at + ".action")
        args = []
        for j, arg in enumerate(call.get("args") or []):
            aat = f"{at}.args[{j}]"
            if not isinstance(arg, dict):
                raise SeccompError(f"{aat} must be an object, got {arg!r}")
            index = arg.get("index")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 5:
                raise SeccompError(f"{aat}.index must be 0-5 (syscalls have six arguments), got {index!r}")
            op = arg.get("op")
            if op not in OPERATORS:
                raise SeccompError(f"{aat}.op: unknown operator {op!r}; use one of {', '.join(sorted(OPERATORS))}")
            value = _uint(arg.get("value", 0), aat + ".value", 64)
            value_two = _uint(arg.get("valueTwo", 0), aat + ".valueTwo", 64)
            args.append((index, OPERATORS[op], value, value_two))
        names = call.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise SeccompError(f"{at}.names must be a list of syscall names, got {names!r}")
        for name in names:
            if action == _ACT_NOTIFY and name == "write":
                raise SeccompError(f"{at}: SCMP_ACT_NOTIFY cannot be used for write (the init reports the "
                                   "listener fd with write); use another action for write")
            rules.append(_Rule(name, action, args, at))
    notify = any(r.action == _ACT_NOTIFY for r in rules)
    listener = seccomp.get("listenerPath") or ""
    if notify and not listener:
        raise SeccompError(f"{where}.listenerPath is required when a rule uses SCMP_ACT_NOTIFY: give the "
                           "seccomp agent's unix socket")
    if not isinstance(listener, str) or not isinstance(seccomp.get("listenerMetadata") or "", str):
        raise SeccompError(f"{where}.listenerPath and listenerMetadata must be strings")
    return default, arches, flags, rules, notify


# ---------------------------------------------------------------- building
def prepare(seccomp, cache_dir=None):
    """Build the filter for linux.seccomp (see the module docstring); None when seccomp is off.

    With `cache_dir`, a program built once is kept there under a digest of the profile and the
    libseccomp version: engines give every container the same profile, and libseccomp takes
    ~11 ms to compile docker's (434 rules, 3 architectures) on this host."""
    if not seccomp:
        return None
    if isinstance(seccomp, dict) and not seccomp.get("defaultAction") and not seccomp.get("syscalls"):
        return None  # runc: no default action and no rules means seccomp disabled
    default, arches, flags, rules, notify = _parse(seccomp)
    lib = _libseccomp()
    if notify:
        if lib.seccomp_api_get() < 6:
            raise SeccompError("SCMP_ACT_NOTIFY needs libseccomp >= 2.5 and Linux >= 5.7 (API level 6); "
                               "upgrade them or use another action")
        flags |= _SECCOMP_FILTER_FLAG_NEW_LISTENER
    cache_file = _cache_file(cache_dir, seccomp) if cache_dir else None
    program = _read_cache(cache_file) if cache_file else None
    if program is None:
        program = _build(lib, default, arches, rules)
        if not _is_allow(default):
            program = _enosys_stub(lib, arches, rules) + program
        if cache_file:
            _write_cache(cache_file, program)
    if len(program) // 8 > _BPF_MAXINSNS:
        raise SeccompError(f"the seccomp filter has {len(program) // 8} instructions, more than the kernel's "
                           f"{_BPF_MAXINSNS}; merge rules or drop syscalls from linux.seccomp")
    return Filter(program, flags, notify)


_CACHE_ENTRIES = 64  # profiles kept; the oldest go first


def _cache_file(cache_dir, seccomp):
    try:
        from _sha256 import sha256  # the C core of hashlib's sha256 (hashlib itself loads OpenSSL)
    except ImportError:  # pragma: no cover - other Python builds
        from hashlib import sha256
    from crate_runc import fastjson
    key = f"{library_version()} {os.uname().machine} {fastjson.dumps(seccomp)}"
    return os.path.join(cache_dir, sha256(key.encode()).hexdigest() + ".bpf")


def _read_cache(path):
    try:
        with open(path, "rb") as f:
            program = f.read()
    except OSError:
        return None
    return program if program and len(program) % 8 == 0 else None


def _write_cache(path, program):
    """Best effort: a failure to cache only costs the next create the build again."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(program)
        os.rename(tmp, path)
        entries = sorted((e for e in os.scandir(directory) if e.name.endswith(".bpf")),
                         key=lambda e: e.stat().st_mtime)
        for stale in entries[:-_CACHE_ENTRIES]:
            os.unlink(stale.path)
    except OSError:
        pass


def _is_allow(action):
    # runc's isAllowAction: a tracer should handle new syscalls itself, so TRACE counts as allow
    return action in (_ACT_ALLOW, _ACT_LOG) or action & 0xffff0000 == _ACT_TRACE


def _build(lib, default, arches, rules):
    import ctypes
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompError("libseccomp could not create a filter (seccomp_init failed); check "
                           "linux.seccomp.defaultAction")
    try:
        for name in arches:
            token = lib.seccomp_arch_resolve_name(name.encode())
            rc = lib.seccomp_arch_add(ctx, token) if token else -22
            if rc not in (0, -_EEXIST):
                raise SeccompError(f"linux.seccomp.architectures: libseccomp cannot add {name} "
                                   f"({os.strerror(-rc)}); remove it")
        # no_new_privileges is the init's business (process.noNewPrivileges), not the filter's
        lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0)
        for rule in rules:
            if rule.action == default:
                continue  # redundant; libseccomp would refuse it
            nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
            if nr == -1:
                continue  # unknown to libseccomp: not on this kernel/arch (runc skips it too)
            counts = {}
            for index, *_ in rule.args:
                counts[index] = counts.get(index, 0) + 1
            if any(n > 1 for n in counts.values()):
                # several conditions on one argument: runc adds each as its own rule (they OR)
                groups = [[arg] for arg in rule.args]
            else:
                groups = [rule.args]
            for group in groups:
                conds = (lib.ArgCmp * len(group))(*[lib.ArgCmp(*arg) for arg in group]) if group else None
                rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(group),
                                                ctypes.addressof(conds) if group else None)
                if rc < 0:
                    raise SeccompError(f"{rule.where}: libseccomp refused the rule for {rule.name} "
                                       f"({os.strerror(-rc)}); check its action and args")
        fd = os.memfd_create("crate-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompError(f"libseccomp could not export the filter ({os.strerror(-rc)})")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


# ---------------------------------------------------------------- runc's -ENOSYS stub
# classic BPF: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
def _ld_abs(off):
    return (0x20, 0, 0, off)                    # BPF_LD | BPF_W | BPF_ABS


def _ja(skip):
    return (0x05, 0, 0, skip)                   # BPF_JMP | BPF_JA


def _ret(value):
    return (0x06, 0, 0, value)                  # BPF_RET | BPF_K


def _jeq(k, jt=0, jf=0):
    return (0x15, jt, jf, k)                    # BPF_JMP | BPF_JEQ | BPF_K


def _jgt(k, jt=0, jf=0):
    return (0x25, jt, jf, k)                    # BPF_JMP | BPF_JGT | BPF_K


def _jset(k, jt=0, jf=0):
    return (0x45, jt, jf, k)                    # BPF_JMP | BPF_JSET | BPF_K


def _enosys_stub(lib, arches, rules):
    """runc's patchbpf stub: per architecture, syscalls above the largest one the profile names
    return -ENOSYS. The native architecture is always included (runc 1.2)."""
    tokens = []
    for name in arches:
        token = lib.seccomp_arch_resolve_name(name.encode())
        if token and token not in tokens:
            tokens.append(token)
    native = lib.seccomp_arch_native()
    if native not in tokens:
        tokens.append(native)
    last = {}   # audit arch -> {token: largest syscall number}
    for token in tokens:
        audit = _AUDIT_X86_64 if token == _SCMP_X32 else token
        largest = 0
        for rule in rules:
            nr = lib.seccomp_syscall_resolve_name_arch(token, rule.name.encode())
            largest = max(largest, nr)
        per_arch = last.setdefault(audit, {})
        if largest > 0:
            per_arch[token] = largest
    enosys = _ACT_ERRNO | _ENOSYS
    tail = [_ja(1), _ret(enosys)]   # fall through into the filter; jumps to [1] get ENOSYS
    table = {}
    for audit, largest in last.items():
        to_enosys = len(tail) - 1
        to_filter = to_enosys + 1
        section = [_ld_abs(0)]
        if not largest:
            continue
        if len(largest) == 1:
            (token, nr), = largest.items()
            if token in (_AUDIT_S390, _AUDIT_S390X):
                # unknown syscalls arrive as the multiplexer setup(2), number 0
                section += [_jeq(0, 0, 1), _ret(enosys)]
            if to_enosys + 1 <= 255:
                sec_tail = [_jgt(nr, to_enosys + 1, 0), _ja(to_filter)]
            else:
                sec_tail = [_jgt(nr, 0, 1), _ret(enosys), _ja(to_filter)]
            if audit == _AUDIT_X86_64:
                # x86_64 and x32 share the audit arch; bit 30 of the number tells them apart
                if token == _SCMP_X32:
                    sec_tail = [_jset(1 << 30, 0, len(sec_tail) - 1)] + sec_tail
                else:
                    sec_tail = [_jset(1 << 30, len(sec_tail) - 1, 0)] + sec_tail
            section += sec_tail
        else:
            x86, x32 = largest[_AUDIT_X86_64], largest[_SCMP_X32]
            if to_enosys + 2 <= 255:
                section += [_jset(1 << 30, 1, 0), _jgt(x86, to_enosys + 2, 1), _jgt(x32, to_enosys + 1, 0),
                            _ja(to_filter)]
            else:
                section += [_jset(1 << 30, 1, 0), _jgt(x86, 1, 2), _jgt(x32, 0, 1), _ret(enosys), _ja(to_filter)]
        tail = section + tail
        table[audit] = len(tail)
    tail = [_ja(len(tail))] + tail   # architectures not listed go straight to the filter
    for audit in last:
        jump = len(tail) - table.get(audit, 0)
        if jump <= 255:
            tail = [_jeq(audit, jump, 0)] + tail
        else:
            tail = [_jeq(audit, 0, 1), _ja(jump)] + tail
    tail = [_ld_abs(4)] + tail
    import struct
    return b"".join(struct.pack("=HBBI", *insn) for insn in tail)


# ---------------------------------------------------------------- loading
class Filter:
    """A built filter: load() installs it with one syscall (nothing is looked up after prepare)."""

    def __init__(self, program, flags, notify):
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self.program = program            # the cBPF as loaded (struct sock_filter[], host order)
        self.flags = flags                # seccomp(2) flags
        self.notify = notify
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._fprog = SockFprog(len(program) // 8, ctypes.addressof(self._buf))
        libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = libc.prctl
        self._prctl.restype = ctypes.c_int
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._get_errno = ctypes.get_errno
        self._args = (ctypes.c_long, ctypes.c_ulong, ctypes.addressof(self._fprog))

    def load(self):
        """Install the filter on the calling thread; returns the listener fd for SCMP_ACT_NOTIFY."""
        c_long, c_ulong, fprog = self._args
        if self.flags == 0:
            rc = self._prctl(_PR_SET_SECCOMP, c_ulong(_SECCOMP_MODE_FILTER), c_ulong(fprog), c_ulong(0), c_ulong(0))
        else:
            rc = self._syscall(c_long(_NR_SECCOMP), c_ulong(_SECCOMP_SET_MODE_FILTER), c_ulong(self.flags),
                               c_ulong(fprog))
        if rc < 0:
            err = self._get_errno()
            hint = ""
            if err == 13:  # EACCES
                hint = ("; without no_new_privileges loading needs CAP_SYS_ADMIN: load it before dropping "
                        "capabilities or set process.noNewPrivileges")
            raise SeccompError(f"cannot load the seccomp filter: {os.strerror(err)}{hint}")
        return rc if self.flags & _SECCOMP_FILTER_FLAG_NEW_LISTENER else None


def send_to_listener(seccomp, fd, pid, state):
    """Send the listener fd and the container process state to linux.seccomp.listenerPath (runc's
    sendContainerProcessState): one message, JSON body, fd in SCM_RIGHTS."""
    import json
    import socket
    path = seccomp.get("listenerPath") or ""
    message = {"ociVersion": state.get("ociVersion", ""), "fds": ["seccompFd"], "pid": pid}
    if seccomp.get("listenerMetadata"):
        message["metadata"] = seccomp["listenerMetadata"]
    message["state"] = state
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            socket.send_fds(sock, [json.dumps(message, separators=(",", ":")).encode()], [fd])
    except OSError as e:
        raise SeccompError(f"cannot send the seccomp listener fd to {path!r} (linux.seccomp.listenerPath): "
                           f"{e.strerror or e}; is the seccomp agent listening?") from None


# ---------------------------------------------------------------- features
_supported = None


def _supported_flags():
    global _supported
    if _supported is None:
        lib = _libseccomp()
        api = lib.seccomp_api_get()
        found = [_FLAG_TSYNC]
        ctx = lib.seccomp_init(_ACT_ALLOW)
        try:
            for flag, attr, level in ((_FLAG_SPEC_ALLOW, _ATTR_CTL_SSB, 4), (_FLAG_LOG, _ATTR_CTL_LOG, 3)):
                if api >= level and lib.seccomp_attr_set(ctx, attr, 1) == 0:
                    found.append(flag)
        finally:
            lib.seccomp_release(ctx)
        _supported = found
    return _supported


def features():
    """The "seccomp" object of `crate-runc features` (runc 1.2 / runtime-spec features.md)."""
    try:
        supported = _supported_flags()
    except SeccompError:
        return {"enabled": False}
    return {"enabled": True, "actions": sorted(ACTIONS), "operators": sorted(OPERATORS),
            "archs": sorted(ARCHES), "knownFlags": list(KNOWN_FLAGS), "supportedFlags": list(supported)}
