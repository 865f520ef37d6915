"""crate_runc.seccomp: real filters loaded into forked children, compared with runc 1.1's.

A child prepares (or inherits) a Filter, loads it, makes syscalls and reports their errnos through
a pipe. runc's loaded filter is read back from a running runc container with
PTRACE_SECCOMP_GET_FILTER and compared with ours, byte for byte or by running both programs.
"""
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import runtime_helpers
from conftest import require_runc, TEST_USER, unavailable
from crate_runc import seccomp
from crate_runc.seccomp import SeccompError

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def nr(name):
    """The native syscall number of name, per libseccomp."""
    value = seccomp._libseccomp().seccomp_syscall_resolve_name(name.encode())
    assert value >= 0, name
    return value


def native_syscalls(below):
    """Names of the native syscalls numbered below `below`."""
    lib = seccomp._libseccomp()
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    names = []
    for number in range(below):
        name = lib.seccomp_syscall_resolve_num_arch(lib.seccomp_arch_native(), number)
        if name:
            names.append(ctypes.string_at(name).decode())
    return names


def raw_syscall(number, *args):
    """(result, errno name) of a raw syscall, from inside a filtered child."""
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def attempt(call, *args):
    try:
        result = call(*args)
        if isinstance(result, int) and call is os.open:
            os.close(result)
        elif hasattr(result, "close"):
            result.close()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


class Children:
    """Forked children of one test; killed and reaped by pid at the end."""

    def __init__(self):
        self.pids = []

    def run(self, body, wait=True):
        """Fork; the child runs body() and sends back its JSON result. Returns the result, or
        (pid, read_result) when wait is False."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                os.write(w, json.dumps(body()).encode())
            except BaseException as e:
                try:
                    os.write(w, json.dumps({"exception": f"{type(e).__name__}: {e}"}).encode())
                except BaseException:
                    pass
                code = 1
            finally:
                os._exit(code)
        self.pids.append(pid)
        os.close(w)

        def result():
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            os.close(r)
            os.waitpid(pid, 0)
            self.pids.remove(pid)
            return json.loads(data) if data else None

        return result() if wait else (pid, result)

    def cleanup(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


@pytest.fixture
def children():
    c = Children()
    yield c
    c.cleanup()


def loaded(profile, probe):
    """Prepare profile, then in a child: load it and return probe()."""
    f = seccomp.prepare(profile)

    def body():
        f.load()
        return probe()
    return f, body


# ================================================================== filters at work
@pytest.mark.root
def test_denied_syscall_gets_the_configured_errno(children):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV}]}
    _, body = loaded(profile, lambda: [attempt(os.mkdir, "/tmp/crate-test-never"), attempt(os.rmdir, "/nonexistent"),
                                       attempt(os.getpid), attempt(os.stat, "/"), attempt(os.open, "/dev/null", 0)])
    assert children.run(body) == ["EPERM", "EXDEV", "ok", "ok", "ok"]
    assert not os.path.exists("/tmp/crate-test-never")


@pytest.mark.root
def test_argument_comparisons(children, tmp_path):
    existing = tmp_path / "existing"
    existing.write_text("x")
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        # two conditions on one argument: runc adds each as its own rule, so they OR
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": socket.AF_INET6, "op": "SCMP_CMP_EQ"}]},
        # conditions on different arguments AND; MASKED_EQ takes (mask, value)
        {"names": ["socketpair"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
         "args": [{"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 0xf, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["openat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS,
         "args": [{"index": 2, "value": os.O_CREAT, "valueTwo": os.O_CREAT, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 100, "op": "SCMP_CMP_GT"}]},
    ]}

    def probe():
        return [attempt(socket.socket, socket.AF_INET), attempt(socket.socket, socket.AF_INET6),
                attempt(socket.socket, socket.AF_UNIX),
                attempt(socket.socketpair, socket.AF_UNIX, socket.SOCK_DGRAM),
                attempt(socket.socketpair, socket.AF_UNIX, socket.SOCK_STREAM),
                attempt(os.open, str(existing), os.O_RDONLY),
                attempt(os.open, str(tmp_path / "new"), os.O_WRONLY | os.O_CREAT),
                raw_syscall(nr("getpriority"), 0, 101), raw_syscall(nr("getpriority"), 0, 0)]

    _, body = loaded(profile, probe)
    assert children.run(body) == ["EPERM", "EPERM", "ok", "EACCES", "ok", "ok", "EROFS", "EPERM", "ok"]


@pytest.mark.root
def test_unknown_syscalls_get_enosys_from_a_deny_by_default_profile(children):
    # everything numbered below 400 but mkdir is allowed; the rest gets the default EPERM, except
    # syscalls above the largest one named, which get ENOSYS (runc's stub) so libcs fall back
    allowed = [n for n in native_syscalls(400) if n not in ("mkdir", "mkdirat")]
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86",
                                                                   "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
               "syscalls": [{"names": allowed + ["not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]}
    _, body = loaded(profile, lambda: [attempt(os.mkdir, "/tmp/crate-test-never"), attempt(os.getpid),
                                       raw_syscall(1000), raw_syscall(450)])
    assert children.run(body) == ["EPERM", "ok", "ENOSYS", "ENOSYS"]
    # an allowing default needs no stub: unknown numbers reach the kernel, which says ENOSYS itself
    plain = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"],
                                                                            "action": "SCMP_ACT_ERRNO"}]})
    stubbed = seccomp.prepare({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mkdir"],
                                                                              "action": "SCMP_ACT_ALLOW"}]})
    assert run_cbpf(plain.program, 1000, AUDIT_X86_64) == 0x7fff0000
    if os.uname().machine == "x86_64":
        assert run_cbpf(stubbed.program, 1000, AUDIT_X86_64) == 0x50000 | errno.ENOSYS
        assert run_cbpf(stubbed.program, nr("getpid"), AUDIT_X86_64) == 0x50000 | errno.EPERM


@pytest.mark.root
def test_filter_loads_after_the_library_is_gone(children, tmp_path):
    # the init prepares before pivot_root and loads after it: simulate with chroot into an empty dir
    empty = tmp_path / "empty"
    empty.mkdir()
    f = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"],
                                                                        "action": "SCMP_ACT_ERRNO"}]})

    def body():
        os.chroot(str(empty))
        os.chdir("/")
        assert not os.path.exists("/usr/lib") and not os.path.exists("/lib")
        f.load()
        return [attempt(os.mkdir, "/made"), os.listdir("/")]

    assert children.run(body) == ["EPERM", []]


@pytest.mark.root
def test_without_no_new_privs_loading_needs_cap_sys_admin(children):
    import pwd
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        unavailable(f"no test user {TEST_USER!r} (tests/setup-host.sh creates it)")
    f = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"],
                                                                        "action": "SCMP_ACT_ERRNO"}]})

    def as_user(no_new_privs):
        def body():
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            if no_new_privs:
                assert libc.prctl(38, 1, 0, 0, 0) == 0   # PR_SET_NO_NEW_PRIVS, as the init does
            try:
                f.load()
            except SeccompError as e:
                return str(e)
            return attempt(os.mkdir, "/tmp/crate-test-never")
        return body

    refused = children.run(as_user(False))
    assert refused.startswith("cannot load the seccomp filter: Permission denied") and "noNewPrivileges" in refused
    assert children.run(as_user(True)) == "EPERM"


@pytest.mark.root
def test_flags_are_passed_to_the_kernel(children):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                                            "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    f = seccomp.prepare(profile)
    assert f.flags == (1 << 1) | (1 << 2)   # LOG | SPEC_ALLOW; TSYNC is accepted and ignored, as runc 1.2
    assert seccomp.prepare({**profile, "flags": []}).flags == 0

    def body():
        f.load()
        status = open("/proc/self/status").read()
        return [attempt(os.mkdir, "/tmp/crate-test-never"), "Seccomp:\t2" in status, os.getpid()]

    result = children.run(body)
    assert result[:2] == ["EPERM", True]
    # SECCOMP_FILTER_FLAG_LOG: the kernel logs the refused mkdir (type=1326) for that pid
    if not shutil.which("dmesg"):
        return
    for _ in range(20):
        log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        if f"pid={result[2]} " in log:
            break
        time.sleep(0.05)
    assert any(f"pid={result[2]} " in line and f"syscall={nr('mkdir')} " in line and "type=1326" in line
               for line in log.splitlines()), "no audit record for the logged filter"


# ================================================================== bad input
@pytest.mark.parametrize("profile, message", [
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                                                      {"names": ["rmdir"], "action": "SCMP_ACT_FOO"}]},
     "linux.seccomp.syscalls[1].action: unknown action 'SCMP_ACT_FOO'"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, "linux.seccomp.defaultAction: unknown action 'SCMP_ACT_NOPE'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"], "syscalls": []},
     "linux.seccomp.architectures[0]: unknown architecture 'SCMP_ARCH_Z80'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]},
     "linux.seccomp.syscalls[0].args[0].op: unknown operator 'SCMP_CMP_ABOUT'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].index must be 0-5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].value must be an integer"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "linux.seccomp.defaultErrnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "mkdir", "action": "SCMP_ACT_ERRNO"}]},
     "linux.seccomp.syscalls[0].names must be a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]},
     "linux.seccomp.flags[0]: unknown flag"),
    ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"},
     "linux.seccomp.defaultAction cannot be SCMP_ACT_NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
      "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.syscalls[0]: SCMP_ACT_NOTIFY cannot be used for write"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.listenerPath is required"),
])
def test_bad_profiles_name_the_field(profile, message):
    with pytest.raises(SeccompError) as e:
        seccomp.prepare(profile)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_disabled_seccomp_builds_nothing():
    assert seccomp.prepare(None) is None
    assert seccomp.prepare({}) is None
    assert seccomp.prepare({"architectures": ["SCMP_ARCH_X86_64"]}) is None   # runc: no action, no rules


def test_unknown_syscall_names_are_skipped():
    with_unknown = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "crate_no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]})
    without = seccomp.prepare({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]})
    assert with_unknown.program == without.program


def test_features_match_runc():
    feats = seccomp.features()
    assert feats["enabled"] is True
    assert feats["knownFlags"] == ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                   "SECCOMP_FILTER_FLAG_LOG"]
    assert "SECCOMP_FILTER_FLAG_TSYNC" in feats["supportedFlags"]
    assert set(feats["supportedFlags"]) <= set(feats["knownFlags"])
    if shutil.which("runc"):
        theirs = json.loads(subprocess.run(["runc", "features"], capture_output=True, text=True,
                                           check=True).stdout)["linux"]["seccomp"]
        assert feats["actions"] == theirs["actions"] and feats["operators"] == theirs["operators"]
        assert set(theirs["archs"]) <= set(feats["archs"])
        assert set(feats["archs"]) - set(theirs["archs"]) <= {"SCMP_ARCH_RISCV64"}   # runc 1.2 added it
        for key in ("knownFlags", "supportedFlags"):   # runc >= 1.2 reports flags
            if key in theirs:
                assert theirs[key] == feats[key]


# ================================================================== the same filter as runc
AUDIT_X86_64, AUDIT_I386 = 0xc000003e, 0x40000003


def run_cbpf(program, number, arch, args=(0, 0, 0, 0, 0, 0)):
    """Run a seccomp cBPF program on struct seccomp_data {nr, arch, ip, args[6]}: its verdict."""
    data = struct.pack("=iIQ6Q", number, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:            # ld [k]
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:          # ret #k
            return k
        elif code == 0x16:          # ret a
            return a
        elif code == 0x05:          # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):   # jeq/jgt/jge/jset #k
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if taken else jf
        elif code in (0x1d, 0x2d, 0x3d, 0x4d):   # the same against x
            taken = {0x1d: a == x, 0x2d: a > x, 0x3d: a >= x, 0x4d: bool(a & x)}[code]
            pc += jt if taken else jf
        elif code == 0x54:          # and #k
            a &= k
        elif code == 0x00:          # ld #k
            a = k
        elif code == 0x01:          # ldx #k
            x = k
        elif code == 0x02:          # st M[k]
            mem[k] = a
        elif code == 0x60:          # ld M[k]
            a = mem[k]
        elif code == 0x07:          # tax
            x = a
        elif code == 0x87:          # txa
            a = x
        else:
            raise ValueError(f"opcode {code:#x} at {pc - 1} not emulated")


def loaded_filter(pid):
    """The newest seccomp filter of a process, via PTRACE_SECCOMP_GET_FILTER (cBPF bytes)."""
    if libc.ptrace(16, pid, None, None) < 0:   # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "PTRACE_ATTACH")
    try:
        os.waitpid(pid, 0x40000000)   # __WALL: the tracee's stop
        count = libc.ptrace(0x420c, pid, None, None)   # PTRACE_SECCOMP_GET_FILTER
        if count < 0:
            raise OSError(ctypes.get_errno(), "PTRACE_SECCOMP_GET_FILTER")
        buf = ctypes.create_string_buffer(count * 8)
        libc.ptrace(0x420c, pid, None, buf)
        return buf.raw
    finally:
        libc.ptrace(17, pid, None, None)   # PTRACE_DETACH


@pytest.fixture(scope="module")
def runc_bundle(tmp_path_factory):
    require_runc()
    directory = str(tmp_path_factory.mktemp("runc-seccomp"))
    config = runtime_helpers.runc_sleep_bundle(directory, applets=("sleep",))
    return directory, config


def runc_filter(bundle, profile):
    """The filter runc 1.1 loads for profile, read from its running container."""
    directory, config = bundle
    config = json.loads(json.dumps(config))
    config["linux"]["seccomp"] = profile
    config["linux"]["cgroupsPath"] = f"/crate-test-seccomp-{os.getpid()}"
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    root = os.path.join(directory, "state")
    container_id = f"crate-test-seccomp-{os.getpid()}"
    try:
        with open(os.path.join(directory, "stderr"), "w+") as err:
            run = subprocess.run(["runc", "--root", root, "run", "-d", "--bundle", directory, container_id],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            err.seek(0)
            assert run.returncode == 0, err.read()
        state = json.loads(subprocess.run(["runc", "--root", root, "state", container_id], capture_output=True,
                                          text=True, check=True).stdout)
        assert state["status"] == "running", state
        return loaded_filter(state["pid"])
    finally:
        subprocess.run(["runc", "--root", root, "delete", "-f", container_id], capture_output=True)


def our_loaded_filter(children, profile):
    """Our filter for profile as the kernel holds it, read back from a child that loaded it."""
    f = seccomp.prepare(profile)
    ready_r, ready_w = os.pipe()

    def body():
        f.load()
        os.write(ready_w, b"x")
        time.sleep(3600)

    pid, _ = children.run(body, wait=False)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    os.close(ready_w)
    program = loaded_filter(pid)
    assert program == f.program
    return program


@pytest.mark.root
def test_same_filter_as_runc_deny_by_default(runc_bundle, children):
    # busybox sleep must survive the profile under runc: allow everything numbered below 400
    allowed = [n for n in native_syscalls(400) if n not in ("mkdir", "mkdirat", "rmdir")]
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM,
               "architectures": ["SCMP_ARCH_X86_64"] if os.uname().machine == "x86_64" else [],
               "syscalls": [{"names": allowed + ["crate_unknown"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}]}
    if not profile["architectures"]:
        unavailable("the runc comparison profiles are written for x86_64")
    assert our_loaded_filter(children, profile) == runc_filter(runc_bundle, profile)


@pytest.mark.root
def test_same_filter_as_runc_allow_by_default_multi_arch(runc_bundle, children):
    if os.uname().machine != "x86_64":
        unavailable("the runc comparison profiles are written for x86_64")
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [
                   {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
                   {"names": ["kexec_load", "open_by_handle_at"], "action": "SCMP_ACT_KILL_PROCESS"},
                   {"names": ["acct"], "action": "SCMP_ACT_TRAP"},
                   {"names": ["swapon"], "action": "SCMP_ACT_LOG"},
                   {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                             {"index": 0, "value": 17, "op": "SCMP_CMP_EQ"}]},
                   {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"},
                             {"index": 1, "value": 5, "op": "SCMP_CMP_LT"}]},
                   {"names": ["crate_unknown"], "action": "SCMP_ACT_ERRNO"}]}
    ours = our_loaded_filter(children, profile)
    theirs = runc_filter(runc_bundle, profile)
    assert ours == theirs   # no -ENOSYS stub with an allowing default, so no map-order freedom
    # and a deny-by-default multi-arch profile: runc orders the stub's arch sections as Go's map
    # iteration falls, so compare what both programs answer for every syscall on every arch
    allowed = [n for n in native_syscalls(400) if n not in ("mkdir", "mkdirat")]
    denying = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": profile["architectures"],
               "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]}
    ours = our_loaded_filter(children, denying)
    theirs = runc_filter(runc_bundle, denying)
    assert len(ours) == len(theirs)
    for arch, base in ((AUDIT_X86_64, 0), (AUDIT_X86_64, 0x40000000), (AUDIT_I386, 0)):
        for number in range(0, 600):
            assert run_cbpf(ours, base + number, arch) == run_cbpf(theirs, base + number, arch), (arch, number)


# ================================================================== SCMP_ACT_NOTIFY and the agent
SECCOMP_IOCTL_NOTIF_RECV = 0xc0502100   # _IOWR('!', 0, struct seccomp_notif)
SECCOMP_IOCTL_NOTIF_SEND = 0xc0182101   # _IOWR('!', 1, struct seccomp_notif_resp)


@pytest.mark.root
def test_notify_hands_the_listener_to_the_agent(children, tmp_path):
    agent_path = str(tmp_path / "agent.sock")
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": agent_path, "listenerMetadata": "crate-test",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}
    f = seccomp.prepare(profile)
    assert f.notify and f.flags & (1 << 3)   # SECCOMP_FILTER_FLAG_NEW_LISTENER
    to_parent, from_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    go_r, go_w = os.pipe()

    def init():
        fd = f.load()
        socket.send_fds(from_child, [b"fd"], [fd])   # sendmsg is not notified
        os.close(fd)
        os.read(go_r, 1)                             # wait for the parent's go-ahead, as runc's init
        return attempt(os.mkdir, "/tmp/crate-test-notify-never")

    pid, result = children.run(init, wait=False)
    _, fds, _, _ = socket.recv_fds(to_parent, 16, 1)
    listener = fds[0]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(agent_path)
    server.listen(1)
    seen = {}

    def agent():
        conn, _ = server.accept()
        with conn:
            message, agent_fds, _, _ = socket.recv_fds(conn, 65536, 1)
        seen["message"] = json.loads(message)
        notif = bytearray(80)
        fcntl.ioctl(agent_fds[0], SECCOMP_IOCTL_NOTIF_RECV, notif, True)
        notif_id, notif_pid, _, syscall_nr = struct.unpack_from("=QIIi", notif)
        seen["pid"], seen["nr"] = notif_pid, syscall_nr
        fcntl.ioctl(agent_fds[0], SECCOMP_IOCTL_NOTIF_SEND, bytearray(struct.pack("=QqiI", notif_id, 0,
                                                                                -errno.EXDEV, 0)), True)
        os.close(agent_fds[0])

    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    state = {"ociVersion": "1.0.2", "id": "ctr1", "status": "creating", "pid": pid, "bundle": "/b"}
    seccomp.send_to_listener(profile, listener, pid, state)
    os.close(listener)
    os.write(go_w, b"x")
    outcome = result()
    thread.join(10)
    server.close()
    for fd in (go_r, go_w):
        os.close(fd)
    to_parent.close()
    from_child.close()
    assert outcome == "EXDEV"   # the agent's answer, not the kernel's
    assert seen["nr"] == nr("mkdir") and seen["pid"] == pid
    assert seen["message"] == {"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": pid, "metadata": "crate-test",
                               "state": state}


def test_notify_to_a_missing_agent_is_a_clear_error(tmp_path):
    r, w = os.pipe()
    try:
        with pytest.raises(SeccompError, match="listenerPath.*is the seccomp agent listening"):
            seccomp.send_to_listener({"listenerPath": str(tmp_path / "nobody")}, r, 1, {"ociVersion": "1.0.2"})
    finally:
        os.close(r)
        os.close(w)


def test_compiled_programs_are_cached_by_profile(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}
    cache = str(tmp_path / "cache")
    built = seccomp.prepare(profile, cache)
    (entry,) = os.listdir(cache)
    assert (tmp_path / "cache" / entry).read_bytes() == built.program
    again = seccomp.prepare(profile, cache)
    assert again.program == built.program == seccomp.prepare(profile).program
    other = dict(profile, defaultAction="SCMP_ACT_KILL")
    assert seccomp.prepare(other, cache).program != built.program
    assert len(os.listdir(cache)) == 2
    (tmp_path / "cache" / entry).write_bytes(b"torn")  # not whole instructions: built again
    assert seccomp.prepare(profile, cache).program == built.program
    assert (tmp_path / "cache" / entry).read_bytes() == built.program
