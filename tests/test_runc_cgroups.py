"""crate_runc.cgroups on this host's real cgroupfs, compared with runc 1.1 where it helps.

cgroup v1 (and hybrid) is tested on /sys/fs/cgroup; cgroup v2 on the cgroup2 tree this host has
(/sys/fs/cgroup itself, or /sys/fs/cgroup/unified on a hybrid host). Every test makes its own
cgroups (named crate-test-<pid>-<n>) and forked children, and removes them by pid and path.
"""
import errno
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import runtime_helpers
from conftest import require_runc, TEST_USER, unavailable
from crate_runc import cgroups
from crate_runc.cgroups import CgroupError
from crate_runc.cgroups.devices import DeviceRuleError, Emulator, Rule, default_device_rules
from crate_runc.cgroups.paths import cgroup_mode, clean_path, huge_page_sizes, inner_path
from crate_runc.cgroups.resources import blkio_to_io_weight, parse_resources, shares_to_weight, swap_to_v2
from crate_runc.cgroups.v1 import v1_mounts
from crate_runc.cgroups.v2 import V2Manager

MODE = cgroup_mode()
UNIFIED = {"v2": "/sys/fs/cgroup", "hybrid": "/sys/fs/cgroup/unified"}.get(MODE)
_names = iter(range(1, 1 << 30))


def unique(prefix="crate-test"):
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def proc_cgroups(pid):
    """/proc/PID/cgroup as {controllers: path}."""
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":", 2)[1]: line.rstrip("\n").split(":", 2)[2] for line in f}


def read(path):
    with open(path) as f:
        return f.read().strip()


def block_device():
    """(path, major, minor) of a block device node on this host, or None."""
    for name in sorted(os.listdir("/sys/block")):
        try:
            major, minor = read(f"/sys/block/{name}/dev").split(":")
        except OSError:
            continue
        if os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}", int(major), int(minor)
    return None


# ------------------------------------------------------------------ children and cleanup
def _run_child(body):
    """In a forked child: run body, then _exit (never return into pytest)."""
    code = 0
    try:
        body()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class Lab:
    """Forked children and cgroup managers of one test; all removed at the end, by pid and path."""

    def __init__(self):
        self.pids = []
        self.managers = []
        self.dirs = []   # extra cgroup dirs a test made itself, removed deepest first

    def child(self, body=None):
        pid = os.fork()
        if pid == 0:
            _run_child(body or (lambda: time.sleep(3600)))
        self.pids.append(pid)
        return pid

    def spinner(self):
        """A child that counts in shared memory as fast as it can: (pid, read_counter)."""
        shared = mmap.mmap(-1, 8)

        def spin():
            n = 0
            while True:
                n += 1
                shared[:8] = struct.pack("Q", n)

        pid = self.child(spin)
        return pid, lambda: struct.unpack("Q", shared[:8])[0]

    def manager(self, linux, container_id=None, rootless=False):
        m = cgroups.manager_for(linux, container_id or unique(), rootless)
        if m is not None:
            self.managers.append(m)
        return m

    def cleanup(self):
        for m in self.managers:
            try:
                m.thaw()  # v1 frozen tasks die only once thawed
            except CgroupError:
                pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        errors = []
        for m in self.managers:
            try:
                m.destroy()
            except CgroupError as e:
                errors.append(str(e))
        for d in sorted(self.dirs, key=len, reverse=True):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
        leftovers = [p for m in self.managers for p in list(m.paths.values()) + m.parents if os.path.exists(p)]
        assert not errors and not leftovers, (errors, leftovers)


@pytest.fixture
def lab():
    lab = Lab()
    yield lab
    lab.cleanup()


@pytest.fixture
def v1_host():
    if MODE not in ("v1", "hybrid"):
        unavailable(f"this host runs cgroup {MODE}, not v1")


@pytest.fixture
def v2_tree():
    """The cgroup2 tree to test V2Manager on; restores the root's cgroup.subtree_control after."""
    if UNIFIED is None:
        unavailable("no cgroup2 hierarchy is mounted")
    before = read(f"{UNIFIED}/cgroup.subtree_control").split()
    yield UNIFIED
    for controller in read(f"{UNIFIED}/cgroup.subtree_control").split():
        if controller not in before:
            try:
                with open(f"{UNIFIED}/cgroup.subtree_control", "w") as f:
                    f.write("-" + controller)
            except OSError:
                pass  # another cgroup now uses it


def v2_manager(lab, root, linux, container_id=None, rootless=False):
    """A V2Manager on root (the hybrid unified tree here), as manager_for makes on a v2 host."""
    inner, explicit = inner_path(linux, container_id or unique())
    resources = parse_resources(linux.get("resources") or {})
    m = V2Manager.for_container(inner, explicit, resources,
                                default_device_rules(linux.get("devices") or []),
                                rootless, root=root)
    if m is not None:
        lab.managers.append(m)
    return m


# ------------------------------------------------------------------ runc for comparison
class Runc:
    """runc 1.1 on a busybox bundle, to see what it does with the same config."""

    def __init__(self, directory, config):
        self.dir = directory
        self.root = os.path.join(directory, "state")
        self.base = config

    def create(self, container_id, linux):
        config = json.loads(json.dumps(self.base))
        config["linux"].pop("resources", None)
        config["linux"].update(linux)
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(self.dir, "stderr"), "w+") as err:
            run = subprocess.run(["runc", "--root", self.root, "create", "--bundle", self.dir, container_id],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            err.seek(0)
            message = err.read()
        if run.returncode != 0:
            subprocess.run(["runc", "--root", self.root, "delete", "-f", container_id], capture_output=True)
            return None, message
        state = json.loads(subprocess.run(["runc", "--root", self.root, "state", container_id],
                                          capture_output=True, text=True, check=True).stdout)
        return state["pid"], message

    def delete(self, container_id):
        subprocess.run(["runc", "--root", self.root, "delete", "-f", container_id], capture_output=True)


@pytest.fixture(scope="module")
def runc(tmp_path_factory):
    require_runc()
    directory = str(tmp_path_factory.mktemp("runc-bundle"))
    config = runtime_helpers.runc_sleep_bundle(directory)
    return Runc(directory, config)


def remove_empty_parents(relative):
    """rmdir what runc leaves behind: the parents of its cgroups, in every hierarchy."""
    for controller, path in proc_cgroups(os.getpid()).items():
        name = controller.split(",")[0].replace("name=", "")
        base = f"/sys/fs/cgroup/{name}" if name else UNIFIED
        for candidate in (f"{base}/{relative}", f"{base}{path}/{relative}".replace("//", "/")):
            try:
                os.rmdir(candidate)
            except OSError:
                pass


# ================================================================== pure logic (runc's own test vectors)
@pytest.mark.parametrize("given, expected", [
    ("", ""), ("rootfs", "rootfs"), ("../../../var", "var"), ("/../../../var", "/var"),
    ("/foo/bar/", "/foo/bar"), ("/foo/bar/../", "/foo"), ("//a//b", "/a/b"), ("a/./b/../c", "a/c"),
])
def test_clean_path_is_runcs(given, expected):
    assert clean_path(given) == expected


def test_cgroups_path_defaults_to_the_container_id_and_refuses_the_root():
    assert inner_path({}, "web1") == ("web1", False)
    assert inner_path({"cgroupsPath": "/machine/../c1"}, "x") == ("/c1", True)
    assert inner_path({"cgroupsPath": "../../../up"}, "x") == ("up", True)
    for bad in ("/", "a/.."):
        with pytest.raises(CgroupError, match="parent or root cgroup"):
            inner_path({"cgroupsPath": bad}, "x")


def test_v2_conversions_are_runcs():
    # runc's TestConvertCPUSharesToCgroupV2Value / TestConvertBlkIOToIOWeightValue
    assert [shares_to_weight(s) for s in (0, 2, 1024, 262144)] == [0, 1, 39, 10000]
    assert [blkio_to_io_weight(w) for w in (0, 10, 1000)] == [0, 1, 10000]
    # runc's TestConvertMemorySwapToCgroupV2Value: (memory+swap, memory) -> memory.swap.max
    for swap, memory, expected in ((0, 0, 0), (-1, 0, -1), (-1, -1, -1), (-1, 1000, -1), (1000, 1000, 0),
                                   (500, 200, 300), (0, -1, -1)):
        assert swap_to_v2(swap, memory) == expected
    for swap, memory in ((-2, 0), (300, 400), (300, 0), (300, -300), (300, -1)):
        with pytest.raises(CgroupError):
            swap_to_v2(swap, memory)


@pytest.mark.parametrize("resources, field", [
    ({"memory": {"limit": "64M"}}, "linux.resources.memory.limit"),
    ({"memory": {"swappiness": 200}}, "linux.resources.memory.swappiness"),
    ({"cpu": {"shares": -5}}, "linux.resources.cpu.shares"),
    ({"cpu": {"cpus": 3}}, "linux.resources.cpu.cpus"),
    ({"pids": {"limit": True}}, "linux.resources.pids.limit"),
    ({"devices": [{"allow": True, "type": "x", "access": "rwm"}]}, "linux.resources.devices[0].type"),
    ({"devices": [{"allow": True, "access": "rwm"}, {"allow": True, "type": "c", "access": ""}]},
     "linux.resources.devices[1].access"),
    ({"devices": [{"allow": True, "type": "c", "access": "rwx"}]}, "linux.resources.devices[0].access"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": -1}]}},
     "linux.resources.blockIO.throttleReadBpsDevice[0].rate"),
    ({"hugepageLimits": [{"pageSize": "../x", "limit": 1}]}, "linux.resources.hugepageLimits[0].pageSize"),
    ({"unified": {"memory.max": 5}}, "linux.resources.unified.memory.max"),
    ({"unified": {"../memory.max": "5"}}, "linux.resources.unified key"),
])
def test_bad_resources_name_the_field(resources, field):
    with pytest.raises(CgroupError) as e:
        parse_resources(resources)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_device_rules_follow_runcs_emulator():
    rule = Rule
    # allow-all, then a deny exception; an "a" rule resets everything
    emu = Emulator.from_rules([rule("a", -1, -1, "rwm", True), rule("b", 8, 0, "rwm", False)])
    assert emu.default_allow and emu.rules == {("b", 8, 0): 7}
    # permissions merge, and removing part of a rule keeps the rest
    emu = Emulator.from_rules([rule("c", 1, 3, "r", True), rule("c", 1, 3, "w", True),
                               rule("c", 1, 3, "r", False)])
    assert not emu.default_allow and emu.rules == {("c", 1, 3): 2}
    # the kernel cannot punch a hole in a wildcard exception: runc refuses, so do we
    with pytest.raises(DeviceRuleError, match="punch a hole"):
        Emulator.from_rules([rule("c", 1, -1, "rwm", True), rule("c", 1, 3, "r", False)])
    # from an allow-all cgroup (what devices.list shows for a new child) runc writes a deny-all
    # first, then the allowed rules sorted by (major, minor, type)
    current = Emulator.from_list("a *:* rwm\n")
    target = Emulator.from_rules([rule("a", -1, -1, "rwm", False)] + default_device_rules([]))
    assert [r.cgroup_string() for r in current.transition(target)] == [
        "a *:* rwm", "b *:* m", "c *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
        "c 5:0 rwm", "c 5:2 rwm", "c 10:200 rwm", "c 136:* rwm"]
    assert not current.transition(target)[0].allow
    # a config device replaces the default rule with the same path, as runc's createDevices does
    assert rule("c", 1, 3, "rwm", True) not in default_device_rules([{"path": "/dev/null"}])


# runc 1.1's libcontainer/cgroups/ebpf/devicefilter/devicefilter_test.go, expected programs
_RUNC_PROGRAMS = {
    "nil": ([], """
        0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
        1: And32Imm dst: r2 imm: 65535
        2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
        3: RSh32Imm dst: r3 imm: 16
        4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
        5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
block-0:
        6: Mov32Imm dst: r0 imm: 0
        7: Exit"""),
    "builtin": (None, """
        0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
        1: And32Imm dst: r2 imm: 65535
        2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
        3: RSh32Imm dst: r3 imm: 16
        4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
        5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
block-0:
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: Mov32Reg dst: r1 src: r3
        8: And32Imm dst: r1 imm: 1
        9: JNEReg dst: r1 off: -1 src: r3 <block-1>
        10: Mov32Imm dst: r0 imm: 1
        11: Exit
block-1:
        12: JNEImm dst: r2 off: -1 imm: 2 <block-2>
        13: Mov32Reg dst: r1 src: r3
        14: And32Imm dst: r1 imm: 1
        15: JNEReg dst: r1 off: -1 src: r3 <block-2>
        16: Mov32Imm dst: r0 imm: 1
        17: Exit
block-2:
        18: JNEImm dst: r2 off: -1 imm: 2 <block-3>
        19: JNEImm dst: r4 off: -1 imm: 1 <block-3>
        20: JNEImm dst: r5 off: -1 imm: 3 <block-3>
        21: Mov32Imm dst: r0 imm: 1
        22: Exit
block-3:
        23: JNEImm dst: r2 off: -1 imm: 2 <block-4>
        24: JNEImm dst: r4 off: -1 imm: 1 <block-4>
        25: JNEImm dst: r5 off: -1 imm: 5 <block-4>
        26: Mov32Imm dst: r0 imm: 1
        27: Exit
block-4:
        28: JNEImm dst: r2 off: -1 imm: 2 <block-5>
        29: JNEImm dst: r4 off: -1 imm: 1 <block-5>
        30: JNEImm dst: r5 off: -1 imm: 7 <block-5>
        31: Mov32Imm dst: r0 imm: 1
        32: Exit
block-5:
        33: JNEImm dst: r2 off: -1 imm: 2 <block-6>
        34: JNEImm dst: r4 off: -1 imm: 1 <block-6>
        35: JNEImm dst: r5 off: -1 imm: 8 <block-6>
        36: Mov32Imm dst: r0 imm: 1
        37: Exit
block-6:
        38: JNEImm dst: r2 off: -1 imm: 2 <block-7>
        39: JNEImm dst: r4 off: -1 imm: 1 <block-7>
        40: JNEImm dst: r5 off: -1 imm: 9 <block-7>
        41: Mov32Imm dst: r0 imm: 1
        42: Exit
block-7:
        43: JNEImm dst: r2 off: -1 imm: 2 <block-8>
        44: JNEImm dst: r4 off: -1 imm: 5 <block-8>
        45: JNEImm dst: r5 off: -1 imm: 0 <block-8>
        46: Mov32Imm dst: r0 imm: 1
        47: Exit
block-8:
        48: JNEImm dst: r2 off: -1 imm: 2 <block-9>
        49: JNEImm dst: r4 off: -1 imm: 5 <block-9>
        50: JNEImm dst: r5 off: -1 imm: 2 <block-9>
        51: Mov32Imm dst: r0 imm: 1
        52: Exit
block-9:
        53: JNEImm dst: r2 off: -1 imm: 2 <block-10>
        54: JNEImm dst: r4 off: -1 imm: 10 <block-10>
        55: JNEImm dst: r5 off: -1 imm: 200 <block-10>
        56: Mov32Imm dst: r0 imm: 1
        57: Exit
block-10:
        58: JNEImm dst: r2 off: -1 imm: 2 <block-11>
        59: JNEImm dst: r4 off: -1 imm: 136 <block-11>
        60: Mov32Imm dst: r0 imm: 1
        61: Exit
block-11:
        62: Mov32Imm dst: r0 imm: 0
        63: Exit"""),
    "weird": ([("b", 8, 1, "rwm", False), ("a", -1, -1, "rwm", True), ("b", 8, 2, "rwm", False)], """
         0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
         1: And32Imm dst: r2 imm: 65535
         2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
         3: RSh32Imm dst: r3 imm: 16
         4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
         5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
block-0:
         6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
         7: JNEImm dst: r4 off: -1 imm: 8 <block-1>
         8: JNEImm dst: r5 off: -1 imm: 2 <block-1>
         9: Mov32Imm dst: r0 imm: 0
        10: Exit
block-1:
        11: Mov32Imm dst: r0 imm: 1
        12: Exit"""),
}
_MNEMONICS = {0x61: "LdXMemW", 0x54: "And32Imm", 0x74: "RSh32Imm", 0x55: "JNEImm", 0xbc: "Mov32Reg",
              0x5d: "JNEReg", 0xb4: "Mov32Imm", 0x95: "Exit"}


def _parse_listing(text):
    """runc's cilium/ebpf listing -> [(mnemonic, dst, src, imm, jump target index or None)]."""
    labels, insns = {}, []
    for line in text.strip().splitlines():
        line = line.strip()
        if line.endswith(":") and line.startswith("block-"):
            labels[line[:-1]] = len(insns)
            continue
        words = line.split()[1:]
        fields = dict(zip(words[1::2], words[2::2]))
        target = words[-1][1:-1] if words[-1].startswith("<") else None
        insns.append([words[0], int(fields.get("dst:", "r0")[1:]), int(fields.get("src:", "r0")[1:]),
                      int(fields.get("imm:", "0")), target])
    for insn in insns:
        insn[4] = labels[insn[4]] if insn[4] else None
    return [tuple(i) for i in insns]


def _disassemble(program):
    out = []
    for i in range(0, len(program), 8):
        op, regs, off, imm = struct.unpack_from("=BBhi", program, i)
        dst, src = (regs & 0xf, regs >> 4) if sys.byteorder == "little" else (regs >> 4, regs & 0xf)
        jump = i // 8 + 1 + off if op in (0x55, 0x5d) else None
        out.append((_MNEMONICS[op], dst, src, imm, jump))
    return out


@pytest.mark.parametrize("case", sorted(_RUNC_PROGRAMS))
def test_v2_device_program_is_runcs(case):
    from crate_runc.cgroups import bpf
    rules, listing = _RUNC_PROGRAMS[case]
    rules = default_device_rules([]) if rules is None else [Rule(*r) for r in rules]
    emu = Emulator.from_rules(rules)
    assert _disassemble(bpf.device_filter(emu.minimal_rules(), emu.default_allow)) == _parse_listing(listing)


def test_features_say_what_crate_runc_supports():
    assert cgroups.features() == {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": True}


def test_import_is_cheap():
    code = ("import sys; before = set(sys.modules); import crate_runc.cgroups, crate_runc.seccomp; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = {"ctypes", "subprocess", "json", "logging", "re", "socket", "typing", "struct", "threading"}
    assert not heavy & set(new), new


# ================================================================== cgroup v1 (root)
@pytest.mark.root
@pytest.mark.parametrize("style", ["empty", "relative", "absolute"])
def test_v1_cgroup_lands_where_runcs_does(v1_host, runc, lab, style):
    container_id = unique("crate-test-id")
    cgroups_path = {"empty": "", "relative": f"{unique()}/c", "absolute": f"/{unique()}/c"}[style]
    linux = {"cgroupsPath": cgroups_path} if cgroups_path else {}
    pid, message = runc.create(container_id, linux)
    assert pid, message
    try:
        theirs = proc_cgroups(pid)
    finally:
        runc.delete(container_id)
        if cgroups_path:
            remove_empty_parents(cgroups_path.strip("/").split("/")[0])
    m = lab.manager(linux, container_id)
    child = lab.child()
    m.create()
    m.add(child)
    assert proc_cgroups(child) == theirs
    assert m.pids() == [child]


@pytest.mark.root
def test_v1_resources_are_written_as_runc_writes_them(v1_host, runc, lab):
    resources = {
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 4, "minor": 64,
                                                        "access": "rw"},
                    {"allow": True, "type": "b", "major": 7, "access": "r"}],
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20, "swappiness": 10,
                   "disableOOMKiller": True},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 100},
    }
    device = block_device()
    if device:
        _, major, minor = device
        resources["blockIO"] = {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
                                "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}
    files = ["memory/memory.limit_in_bytes", "memory/memory.soft_limit_in_bytes",
             "memory/memory.memsw.limit_in_bytes", "memory/memory.swappiness", "memory/memory.oom_control",
             "cpu/cpu.shares", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us", "cpuset/cpuset.cpus",
             "cpuset/cpuset.mems", "pids/pids.max", "devices/devices.list", "blkio/blkio.throttle.read_bps_device",
             "blkio/blkio.throttle.write_iops_device"]

    def snapshot(prefix):
        out = {}
        for f in files:
            controller, name = f.split("/")
            path = f"/sys/fs/cgroup/{controller}/{prefix}/{name}"
            out[f] = read(path) if os.path.exists(path) else None
        return out

    theirs_path = unique("crate-test-runc")
    container_id = unique("crate-test-id")
    pid, message = runc.create(container_id, {"cgroupsPath": "/" + theirs_path, "resources": resources})
    assert pid, message
    try:
        theirs = snapshot(theirs_path)
    finally:
        runc.delete(container_id)
    mine_path = unique()
    m = lab.manager({"cgroupsPath": "/" + mine_path, "resources": resources})
    m.create()
    m.add(lab.child())
    m.set_resources(resources)
    mine = snapshot(mine_path)
    assert mine == theirs
    assert mine["pids/pids.max"] == "100" and "c 4:64 rw" in mine["devices/devices.list"]


@pytest.mark.root
def test_v1_device_rules_are_enforced(v1_host, lab):
    device = block_device()
    if device is None:
        unavailable("no block device node to test the devices cgroup with")
    path, major, minor = device
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    m.set_resources({"devices": [{"allow": False, "access": "rwm"},
                                 {"allow": True, "type": "b", "major": major, "minor": minor, "access": "r"}]})
    results = os.pipe()

    def probe():
        os.read(go_r, 1)   # wait until the parent has moved us into the cgroup
        out = []
        for target, flags in ((path, os.O_RDONLY), (path, os.O_WRONLY), ("/dev/null", os.O_RDWR)):
            try:
                os.close(os.open(target, flags))
                out.append("ok")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        os.write(results[1], " ".join(out).encode())

    go_r, go_w = os.pipe()
    child = lab.child(probe)
    m.add(child)
    os.write(go_w, b"x")
    os.close(results[1])
    assert os.read(results[0], 100).decode() == "ok EPERM ok"
    for fd in (results[0], go_r, go_w):
        os.close(fd)


@pytest.mark.root
def test_v1_memory_limit_below_usage_is_refused_clearly(v1_host, runc, lab):
    # runc refuses it too (its init already uses more than 4 KiB)
    container_id = unique("crate-test-id")
    pid, message = runc.create(container_id, {"cgroupsPath": "/" + unique(), "resources": {"memory": {"limit": 4096}}})
    if pid:
        runc.delete(container_id)
    assert pid is None and "unable to set memory limit to 4096" in message
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    ready = os.pipe()

    def hog():
        os.read(go_r, 1)
        hold = b"x" * (32 << 20)   # written pages: charged to the cgroup we are in now
        os.write(ready[1], b"x")
        time.sleep(3600)
        return hold

    go_r, go_w = os.pipe()
    child = lab.child(hog)
    m.add(child)
    os.write(go_w, b"x")
    assert os.read(ready[0], 1) == b"x"
    with pytest.raises(CgroupError) as e:
        m.set_resources({"memory": {"limit": 4096}})
    message = str(e.value)
    assert "linux.resources.memory.limit" in message and "already uses" in message and "raise the limit" in message
    # a limit above the usage is fine, and raising memory and swap together works in either order
    m.set_resources({"memory": {"limit": 256 << 20, "swap": 512 << 20}})
    m.set_resources({"memory": {"limit": 128 << 20, "swap": 128 << 20}})
    memory = m.paths["memory"]
    assert read(f"{memory}/memory.limit_in_bytes") == str(128 << 20)
    if os.path.exists(f"{memory}/memory.memsw.limit_in_bytes"):
        assert read(f"{memory}/memory.memsw.limit_in_bytes") == str(128 << 20)
        m.set_resources({"memory": {"limit": -1}})   # unlimited memory takes swap along (runc)
        assert int(read(f"{memory}/memory.memsw.limit_in_bytes")) > 1 << 60
    for fd in (*ready, go_r, go_w):
        os.close(fd)


@pytest.mark.root
def test_v1_refusals_are_clear_and_leave_nothing(v1_host, lab):
    # limits for controllers this host has not mounted fail like runc ("container could not join
    # or create cgroup"), naming the field and the reason
    for name, resources in (("hugetlb", {"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}]}),
                            ("net_cls", {"network": {"classID": 1}})):
        if os.path.exists(f"/sys/fs/cgroup/{name}"):
            continue
        m = lab.manager({"cgroupsPath": "/" + unique()})
        m.create()
        with pytest.raises(CgroupError, match=f"the {name} cgroup controller is not mounted"):
            m.set_resources(resources)
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    with pytest.raises(CgroupError, match="the minimum allowed cpu-shares is 2"):
        m.set_resources({"cpu": {"shares": 1}})
    with pytest.raises(CgroupError, match="unified needs cgroup v2"):
        m.set_resources({"unified": {"memory.max": "1"}})
    with pytest.raises(CgroupError, match="unified needs cgroup v2"):
        cgroups.manager_for({"resources": {"unified": {"memory.max": "1"}}}, unique(), False)
    # cpus the parent does not have: create fails (cpuset is written before anything joins) and
    # removes every directory it made
    top = unique()
    bad = cgroups.manager_for({"cgroupsPath": f"/{top}/c", "resources": {"cpu": {"cpus": "4095"}}}, "x", False)
    with pytest.raises(CgroupError, match=r"linux.resources.cpu.cpus='4095'.*parent cgroup allows"):
        bad.create()
    assert not [p for p in bad.paths.values() if os.path.exists(p)]
    assert not os.path.exists(f"/sys/fs/cgroup/cpuset/{top}") and not os.path.exists(f"/sys/fs/cgroup/pids/{top}")


@pytest.mark.root
def test_v1_freeze_stops_the_processes(v1_host, lab):
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    pid, counter = lab.spinner()
    m.add(pid)
    m.freeze()
    assert m.is_frozen()
    assert read(f"/proc/{pid}/status").split("State:")[1].split()[0] == "D"   # v1 frozen: uninterruptible
    frozen_at = counter()
    time.sleep(0.2)
    assert counter() == frozen_at
    m.thaw()
    assert not m.is_frozen()
    time.sleep(0.2)
    assert counter() > frozen_at


@pytest.mark.root
def test_v1_pids_lists_the_whole_tree(v1_host, lab):
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()

    def parent_of_one():
        os.read(go_r, 1)   # fork only once in the cgroup: the grandchild starts there too
        pid = os.fork()
        if pid == 0:
            _run_child(lambda: time.sleep(3600))
        os.write(report_w, str(pid).encode())
        os.waitpid(pid, 0)

    child = lab.child(parent_of_one)
    m.add(child)
    os.write(go_w, b"x")
    grandchild = int(os.read(report_r, 20))
    try:
        # a grandchild moved to a sub-cgroup of the container still counts (runc walks the tree)
        sub = m.paths["devices"] + "/sub"
        os.mkdir(sub)
        lab.dirs.append(sub)
        with open(sub + "/cgroup.procs", "w") as f:
            f.write(str(grandchild))
        assert sorted(m.pids()) == sorted([child, grandchild])
    finally:
        os.kill(grandchild, signal.SIGKILL)   # started by this test, through its child
        for fd in (go_r, go_w, report_r, report_w):
            os.close(fd)


@pytest.mark.root
def test_v1_destroy_refuses_while_busy_then_leaves_nothing(v1_host, lab):
    top = unique()
    m = cgroups.manager_for({"cgroupsPath": f"/{top}/a/b"}, "x", False)
    m.create()
    child = lab.child()
    m.add(child)
    with pytest.raises(CgroupError, match=f"pids {child}.*kill --all"):
        m.destroy()
    assert os.path.isdir(m.paths["pids"])
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    lab.pids.remove(child)
    m.destroy()
    assert not [p for p in list(m.paths.values()) + m.parents if os.path.exists(p)]
    assert m.parents and all(top in p for p in m.parents)   # the parents it made went too


@pytest.mark.root
def test_v1_state_round_trip(v1_host, lab):
    m = lab.manager({"cgroupsPath": "/" + unique(), "devices": [{"path": "/dev/null", "type": "c",
                                                                 "major": 1, "minor": 3}]})
    m.create()
    first = lab.child()
    m.add(first)
    m.set_resources({})
    assert "c 1:3 rwm" not in read(m.paths["devices"] + "/devices.list")   # linux.devices took /dev/null
    state = json.loads(json.dumps(m.to_state()))
    restored = cgroups.Manager.from_state(state)
    lab.managers = [restored]
    assert restored.paths == m.paths
    second = lab.child()
    restored.add(second)   # what `exec` does
    assert sorted(restored.pids()) == sorted([first, second])
    restored.freeze()
    assert cgroups.Manager.from_state(state).is_frozen()
    restored.thaw()
    restored.set_resources({}, update=False)
    assert "c 1:3 rwm" not in read(m.paths["devices"] + "/devices.list")   # the dedup survives the state
    with pytest.raises(CgroupError, match="no valid cgroup record"):
        cgroups.Manager.from_state({"paths": {}})


@pytest.mark.root
def test_v1_update_changes_only_what_it_is_given(v1_host, lab):
    device = {"allow": True, "type": "c", "major": 4, "minor": 64, "access": "rw"}
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    m.add(lab.child())
    m.set_resources({"devices": [device], "pids": {"limit": 50}, "cpu": {"quota": 20000, "period": 100000}})
    devices_before = read(m.paths["devices"] + "/devices.list")
    m.set_resources({"pids": {"limit": 60}, "cpu": {"quota": 30000}}, update=True)
    assert read(m.paths["devices"] + "/devices.list") == devices_before   # update never touches devices
    assert read(m.paths["pids"] + "/pids.max") == "60"
    assert read(m.paths["cpu"] + "/cpu.cfs_quota_us") == "30000"
    assert read(m.paths["cpu"] + "/cpu.cfs_period_us") == "100000"


def _keys(value, prefix=""):
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            out |= {f"{prefix}{k}"} | _keys(v, f"{prefix}{k}.")
        return out
    return set()


@pytest.mark.root
def test_v1_stats_have_runcs_shape(v1_host, runc, lab):
    container_id = unique("crate-test-id")
    pid, message = runc.create(container_id, {"cgroupsPath": "/" + unique()})
    assert pid, message
    try:
        event = json.loads(subprocess.run(["runc", "--root", runc.root, "events", "--stats", container_id],
                                          capture_output=True, text=True, check=True).stdout)
    finally:
        runc.delete(container_id)
    theirs = event["data"]
    m = lab.manager({"cgroupsPath": "/" + unique()})
    m.create()
    m.add(lab.child())
    m.set_resources({"pids": {"limit": 10}})
    mine = m.stats()
    json.dumps(mine)
    # keys Go leaves out when zero may differ with the values; everything else must match
    omittable = {"memory.cache", "cpu.usage.total", "cpu.usage.percpu", "cpu.usage.percpu_kernel",
                 "cpu.usage.percpu_user", "pids.current", "pids.limit", "cpu.throttling.periods",
                 "cpu.throttling.throttledPeriods", "cpu.throttling.throttledTime"}
    omittable |= {f"memory.{e}.{k}" for e in ("usage", "swap", "kernel", "kernelTCP") for k in ("usage", "max")}
    assert (_keys(mine) ^ _keys(theirs)) <= omittable, _keys(mine) ^ _keys(theirs)
    assert mine["pids"] == {"current": 1, "limit": 10}
    assert mine["network_interfaces"] is None and mine["intel_rdt"] == {}


# ------------------------------------------------------------------ rootless (v1)
def _as_test_user(body):
    """Run body() in a child as the unprivileged test user; returns what it returned (JSON)."""
    import pwd
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        unavailable(f"no test user {TEST_USER!r} (tests/setup-host.sh creates it)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        def run():
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                result = {"ok": body()}
            except CgroupError as e:
                result = {"error": str(e)}
            os.write(w, json.dumps(result).encode())
        _run_child(run)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.root
def test_v1_rootless_without_a_delegated_cgroup_follows_runc(v1_host):
    # nothing writable, nothing asked: no cgroup at all (runc runs such containers cgroup-less)
    assert _as_test_user(lambda: cgroups.manager_for({}, unique(), True)) == {"ok": None}
    got = _as_test_user(lambda: cgroups.manager_for({"resources": {"memory": {"limit": 1 << 26}}}, "x", True))
    assert "rootless container cannot set linux.resources.memory" in got["error"]
    assert "delegate" in got["error"]
    got = _as_test_user(lambda: cgroups.manager_for({"cgroupsPath": "/" + unique()}, "x", True))
    assert "rootless: cannot create or join cgroup" in got["error"]
    # device rules are ignored for rootless containers, as runc does
    assert _as_test_user(lambda: cgroups.manager_for(
        {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}, unique(), True)) == {"ok": None}


@pytest.mark.root
def test_v1_rootless_uses_a_delegated_cgroup(v1_host, lab):
    import pwd
    try:
        uid = pwd.getpwnam(TEST_USER).pw_uid
    except KeyError:
        unavailable(f"no test user {TEST_USER!r} (tests/setup-host.sh creates it)")
    # delegate /<top> in every v1 hierarchy, as an admin would: the directory and its procs files;
    # cpuset needs cpus and mems before anything can join below it
    top = unique()
    controllers = sorted(name for name in v1_mounts() if not name.startswith("name="))
    for controller in controllers:
        d = f"{v1_mounts()[controller][0]}/{top}"
        if os.path.isdir(d):
            continue   # co-mounted with one already done
        os.mkdir(d)
        lab.dirs.append(d)
        if controller == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(f"{d}/{f}", "w") as out:
                    out.write(read(os.path.dirname(d) + "/" + f))
        for f in ("", "/cgroup.procs", "/tasks"):
            os.chown(d + f, uid, -1)

    def inside():
        m = cgroups.manager_for({"cgroupsPath": f"/{top}/c", "resources": {"pids": {"limit": 7}}}, "x", True)
        m.create()
        m.add(os.getpid())
        m.set_resources({"pids": {"limit": 7}, "devices": [{"allow": False, "access": "rwm"}]})
        return {"paths": m.paths, "cgroup": proc_cgroups(os.getpid()), "state": m.to_state()}

    got = _as_test_user(inside)
    assert "ok" in got, got
    got = got["ok"]
    lab.managers.append(cgroups.Manager.from_state(got["state"]))
    # every delegated controller is used; the undelegated name=systemd and unified trees are skipped
    assert sorted(got["paths"]) == controllers
    assert read(f"/sys/fs/cgroup/pids/{top}/c/pids.max") == "7"
    assert got["cgroup"]["pids"] == f"/{top}/c"


# ================================================================== cgroup v2 (root, on this host's cgroup2 tree)
@pytest.mark.root
def test_v2_lifecycle(v2_tree, lab):
    m = v2_manager(lab, v2_tree, {"cgroupsPath": f"/{unique()}/c"})
    m.create()
    m.create()   # idempotent
    assert read(m.path + "/cgroup.type") == "domain"
    pid, counter = lab.spinner()
    m.add(pid)
    assert proc_cgroups(pid)[""] == m.path[len(v2_tree):]
    assert m.pids() == [pid]
    m.freeze()
    assert m.is_frozen()
    frozen_at = counter()
    time.sleep(0.2)
    assert counter() == frozen_at
    m.thaw()
    assert not m.is_frozen()
    time.sleep(0.2)
    assert counter() > frozen_at
    stats = m.stats()
    assert stats["pids"]["current"] == 1 and stats["cpu"]["usage"]["total"] > 0
    restored = cgroups.Manager.from_state(json.loads(json.dumps(m.to_state())))
    assert restored.paths == m.paths and restored.pids() == [pid]


@pytest.mark.root
def test_v2_relative_path_starts_at_the_parent_of_the_own_cgroup(v2_tree, lab):
    own = proc_cgroups(os.getpid())[""]
    m = v2_manager(lab, v2_tree, {}, container_id="web1")
    assert m.path == os.path.normpath(f"{v2_tree}/{os.path.dirname(own)}/web1")
    assert not m.explicit


@pytest.mark.root
def test_v2_device_filter_is_enforced_and_replaced(v2_tree, lab):
    from crate_runc.cgroups import bpf
    device = block_device()
    if device is None:
        unavailable("no block device node to test the device filter with")
    path, major, minor = device
    m = v2_manager(lab, v2_tree, {"cgroupsPath": "/" + unique()})
    m.create()
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "b", "major": major, "minor": minor, "access": "r"}]
    m.set_resources({"devices": rules})
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = bpf.query(fd)
        m.set_resources({"devices": rules})          # a second set replaces the filter
        second = bpf.query(fd)
        m.set_resources({}, update=True)             # update never touches devices
        assert len(first) == len(second) == 1 and first != second and bpf.query(fd) == second
    finally:
        os.close(fd)
    results = os.pipe()
    go_r, go_w = os.pipe()

    def probe():
        os.read(go_r, 1)
        out = []
        for target, flags in ((path, os.O_RDONLY), (path, os.O_WRONLY), ("/dev/null", os.O_RDWR),
                              ("/dev/zero", os.O_RDONLY)):
            try:
                os.close(os.open(target, flags))
                out.append("ok")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        os.write(results[1], " ".join(out).encode())

    child = lab.child(probe)
    m.add(child)
    os.write(go_w, b"x")
    os.close(results[1])
    assert os.read(results[0], 100).decode() == "ok EPERM ok ok"
    for fd in (results[0], go_r, go_w):
        os.close(fd)


@pytest.mark.root
def test_v2_limits_and_unified_values(v2_tree, lab):
    sizes = huge_page_sizes()
    m = v2_manager(lab, v2_tree, {"cgroupsPath": f"/{unique()}/c"})
    m.create()
    m.add(lab.child())
    available = read(m.path + "/cgroup.controllers").split()
    m.set_resources({"unified": {"cgroup.max.descendants": "3"}})
    assert read(m.path + "/cgroup.max.descendants") == "3"
    if "hugetlb" in available and sizes:
        m.set_resources({"hugepageLimits": [{"pageSize": sizes[0], "limit": 2 << 21}],
                         "unified": {f"hugetlb.{sizes[0]}.rsvd.max": str(1 << 21)}})
        assert read(f"{m.path}/hugetlb.{sizes[0]}.max") == str(2 << 21)
        assert read(f"{m.path}/hugetlb.{sizes[0]}.rsvd.max") == str(1 << 21)
        with pytest.raises(CgroupError, match=r"hugepageLimits\[3MB\].*huge page sizes"):
            m.set_resources({"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]})
    for controller, resources, field in (("memory", {"memory": {"limit": 1 << 26}}, "memory.limit"),
                                         ("pids", {"pids": {"limit": 5}}, "pids.limit"),
                                         ("cpu", {"cpu": {"shares": 512}}, "cpu.shares")):
        if controller in available:
            continue   # on a full v2 host these are written; here they are bound to v1
        with pytest.raises(CgroupError, match=f"{field}.*the {controller} controller is not enabled"):
            m.set_resources(resources)
        with pytest.raises(CgroupError, match=f"the {controller} controller is not available"):
            m.set_resources({"unified": {f"{controller}.max": "1"}})
    with pytest.raises(CgroupError, match="must be a cgroup file name such as memory.high"):
        m.set_resources({"unified": {"nodots": "1"}})


@pytest.mark.root
def test_v2_rootless_uses_a_delegated_subtree(v2_tree, lab):
    import pwd
    try:
        uid = pwd.getpwnam(TEST_USER).pw_uid
    except KeyError:
        unavailable(f"no test user {TEST_USER!r} (tests/setup-host.sh creates it)")
    # what systemd does for a user session: a delegated cgroup, the user's processes in a leaf of it
    delegated = f"{v2_tree}/{unique()}"
    os.mkdir(delegated)
    lab.dirs.append(delegated)
    for f in ("", "/cgroup.procs", "/cgroup.subtree_control", "/cgroup.threads"):
        os.chown(delegated + f, uid, -1)
    session = delegated + "/session"
    os.mkdir(session)
    lab.dirs.append(session)
    os.chown(session + "/cgroup.procs", uid, -1)
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def rootless():
        os.setgroups([])
        os.setgid(pwd.getpwnam(TEST_USER).pw_gid)
        os.setuid(uid)
        os.read(go_r, 1)   # wait to be moved into the session cgroup
        inner, explicit = inner_path({}, "ctr")
        m = V2Manager.for_container(inner, explicit, parse_resources({}),
                                    default_device_rules([]), True, root=v2_tree)
        m.create()
        m.add(os.getpid())
        m.set_resources({"devices": [{"allow": False, "access": "rwm"}]})   # eBPF refused: ignored
        os.write(w, json.dumps({"path": m.path, "state": m.to_state()}).encode())
        time.sleep(3600)

    child = lab.child(rootless)
    with open(session + "/cgroup.procs", "w") as f:
        f.write(str(child))
    os.write(go_w, b"x")
    os.close(w)
    got = json.loads(os.read(r, 65536))
    lab.managers.append(cgroups.Manager.from_state(got["state"]))
    assert got["path"] == delegated + "/ctr"    # the parent of its own cgroup, as runc picks
    assert proc_cgroups(child)[""] == got["path"][len(v2_tree):]
    for fd in (r, go_r, go_w):
        os.close(fd)


@pytest.mark.root
def test_v2_rootless_without_delegation(v2_tree):
    def attempt(linux):
        inner, explicit = inner_path(linux, "ctr")
        return V2Manager.for_container(inner, explicit, parse_resources(linux.get("resources")),
                                       [], True, root=v2_tree)

    assert _as_test_user(lambda: attempt({})) == {"ok": None}
    got = _as_test_user(lambda: attempt({"cgroupsPath": "/" + unique()}))
    assert "rootless: cannot create or join cgroup" in got["error"]
    controllers = read(f"{v2_tree}/cgroup.controllers").split()
    if "hugetlb" in controllers:
        got = _as_test_user(lambda: attempt({"resources": {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}}))
        assert "rootless container cannot set linux.resources.hugepageLimits" in got["error"]
