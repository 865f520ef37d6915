"""The cgroup v2 device filter: runc's eBPF program and the bpf(2) calls that attach it.

Imported (with ctypes) only when crate_runc.cgroups.devices attaches a device filter on cgroup v2.
Errors are OSError(errno, "bpf <command>: <reason>"). Layouts are from include/uapi/linux/bpf.h.
"""
import ctypes
import os
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_BPF = {"x86_64": 321, "i386": 357, "i686": 357, "ppc64le": 361, "ppc64": 361, "s390x": 351,
           "armv7l": 386, "armv6l": 386}.get(os.uname().machine, 280)   # 280: arm64/riscv64 generic table

# struct bpf_cgroup_dev_ctx { u32 access_type (device type | access << 16); u32 major; u32 minor; }
_DEV_BLOCK, _DEV_CHAR = 1, 2
_ACC_MKNOD, _ACC_READ, _ACC_WRITE = 1, 2, 4
# eBPF opcodes
_LDX_MEM_W = 0x61      # BPF_LDX | BPF_MEM | BPF_W
_ALU_AND_K = 0x54      # BPF_ALU | BPF_AND | BPF_K
_ALU_RSH_K = 0x74      # BPF_ALU | BPF_RSH | BPF_K
_ALU_MOV_K = 0xb4      # BPF_ALU | BPF_MOV | BPF_K
_ALU_MOV_X = 0xbc      # BPF_ALU | BPF_MOV | BPF_X
_JMP_JNE_K = 0x55      # BPF_JMP | BPF_JNE | BPF_K
_JMP_JNE_X = 0x5d      # BPF_JMP | BPF_JNE | BPF_X
_JMP_EXIT = 0x95       # BPF_JMP | BPF_EXIT
LICENSE = b"Apache"    # the license runc's program declares

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4


def device_filter(exceptions, default_allow):
    """runc 1.1's device filter program (libcontainer/cgroups/ebpf/devicefilter), as bytes.

    exceptions are the emulator's minimal rules: each (type, major, minor, perms, allow) with
    allow != default_allow; a leading "a" rule only restates the default and is skipped. The first
    matching exception decides; otherwise the default does.
    """
    insns = [  # r2 = device type, r3 = requested access, r4 = major, r5 = minor
        (_LDX_MEM_W, 2, 1, 0, 0), (_ALU_AND_K, 2, 0, 0, 0xFFFF),
        (_LDX_MEM_W, 3, 1, 0, 0), (_ALU_RSH_K, 3, 0, 0, 16),
        (_LDX_MEM_W, 4, 1, 4, 0),
        (_LDX_MEM_W, 5, 1, 8, 0),
    ]
    for kind, major, minor, perms, allow in exceptions:
        if kind == "a":
            continue
        block = [(_JMP_JNE_K, 2, 0, "next", _DEV_CHAR if kind == "c" else _DEV_BLOCK)]
        access = ((_ACC_READ if "r" in perms else 0) | (_ACC_WRITE if "w" in perms else 0)
                  | (_ACC_MKNOD if "m" in perms else 0))
        if access != _ACC_READ | _ACC_WRITE | _ACC_MKNOD:   # rwm matches any access: no check
            block += [(_ALU_MOV_X, 1, 3, 0, 0), (_ALU_AND_K, 1, 0, 0, access), (_JMP_JNE_X, 1, 3, "next", 0)]
        if major >= 0:
            block.append((_JMP_JNE_K, 4, 0, "next", major))
        if minor >= 0:
            block.append((_JMP_JNE_K, 5, 0, "next", minor))
        block += [(_ALU_MOV_K, 0, 0, 0, 1 if allow else 0), (_JMP_EXIT, 0, 0, 0, 0)]
        # "next" jumps to the first instruction after this block
        insns += [(op, dst, src, len(block) - i - 1 if off == "next" else off, imm)
                  for i, (op, dst, src, off, imm) in enumerate(block)]
    insns += [(_ALU_MOV_K, 0, 0, 0, 1 if default_allow else 0), (_JMP_EXIT, 0, 0, 0, 0)]
    return encode(insns)


def encode(insns):
    """struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm} in host byte order."""
    little = sys.byteorder == "little"
    out = bytearray()
    for op, dst, src, off, imm in insns:
        if imm >= 1 << 31:
            imm -= 1 << 32
        out += struct.pack("=BBhi", op, (src << 4 | dst) if little else (dst << 4 | src), off, imm)
    return bytes(out)


def _bpf(cmd, attr, what):
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    ret = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_long(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf {what}: {os.strerror(err)}")
    return ret, buf.raw


def load_program(insns, license, prog_type=BPF_PROG_TYPE_CGROUP_DEVICE):
    """Load an eBPF program (bytes of struct bpf_insn); returns its fd. The verifier's log is in the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)

    def attempt(log):
        attr = struct.pack("=IIQQIIQII16sII", prog_type, len(insns) // 8, ctypes.addressof(code),
                           ctypes.addressof(lic), 1 if log is not None else 0, len(log) if log is not None else 0,
                           ctypes.addressof(log) if log is not None else 0, 0, 0, b"", 0, 0)
        return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")[0]

    try:
        return attempt(None)
    except OSError as e:
        if e.errno == 1:  # EPERM: old kernels charge RLIMIT_MEMLOCK (runc raises it too)
            import resource
            try:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                return attempt(None)
            except (OSError, ValueError):
                pass
        log = ctypes.create_string_buffer(65536)
        try:
            return attempt(log)
        except OSError as e2:
            text = log.value.decode(errors="replace").strip().replace("\n", " | ")
            raise OSError(e2.errno, f"bpf BPF_PROG_LOAD: {os.strerror(e2.errno)}"
                          + (f" (verifier: {text[-300:]})" if text else "")) from None


def attach(target_fd, prog_fd, flags, replace_fd=0, attach_type=BPF_CGROUP_DEVICE):
    attr = struct.pack("=IIIII4x", target_fd, prog_fd, attach_type, flags, replace_fd)
    _bpf(BPF_PROG_ATTACH, attr, "BPF_PROG_ATTACH")


def detach(target_fd, prog_fd, attach_type=BPF_CGROUP_DEVICE):
    attr = struct.pack("=IIIII4x", target_fd, prog_fd, attach_type, 0, 0)
    _bpf(BPF_PROG_DETACH, attr, "BPF_PROG_DETACH")


def query(target_fd, attach_type=BPF_CGROUP_DEVICE):
    """Ids of the programs attached directly to the cgroup."""
    count = 64  # the kernel's BPF_CGROUP_MAX_PROGS: room for every program a cgroup can hold
    ids = (ctypes.c_uint32 * count)()
    attr = struct.pack("=IIIIQI4x", target_fd, attach_type, 0, 0, ctypes.addressof(ids), count)
    _, out = _bpf(BPF_PROG_QUERY, attr, "BPF_PROG_QUERY")
    return list(ids[:struct.unpack_from("=I", out, 24)[0]])


def program_fd(prog_id):
    attr = struct.pack("=III4x", prog_id, 0, 0)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr, "BPF_PROG_GET_FD_BY_ID")[0]


def set_cgroup_device_filter(cgroup_fd, insns, license=LICENSE):
    """Attach a device filter to a cgroup, replacing the filters already there (runc's way).

    With exactly one old program it is swapped atomically (BPF_F_REPLACE); otherwise the new one is
    attached first and the old ones detached, so the cgroup is never unfiltered.
    """
    old_ids = query(cgroup_fd)
    prog = load_program(insns, license)
    try:
        old_fds = []
        for prog_id in old_ids:
            try:
                old_fds.append(program_fd(prog_id))
            except OSError as e:
                if e.errno not in (1, 13):  # an LSM may hide a program from us; it only restricts more
                    raise
        try:
            if len(old_fds) == 1 and len(old_ids) == 1:
                try:
                    attach(cgroup_fd, prog, BPF_F_ALLOW_MULTI | BPF_F_REPLACE, old_fds[0])
                    return
                except OSError as e:
                    if e.errno != 22:  # EINVAL: kernel without BPF_F_REPLACE (< 5.6)
                        raise
            attach(cgroup_fd, prog, BPF_F_ALLOW_MULTI)
            for fd in old_fds:
                detach(cgroup_fd, fd)
        finally:
            for fd in old_fds:
                os.close(fd)
    finally:
        os.close(prog)  # the attachment keeps the program alive
