"""cgroup v1 and v2 through cgroupfs, the way runc 1.1's fs/fs2 drivers do it (no systemd).

The core uses this interface (all calls from the crate-runc process on the host, never from the
container's init, which may be in other namespaces or past pivot_root):

    manager_for(linux, container_id, rootless) -> Manager | None
        linux is config.json's "linux" object. linux["cgroupsPath"] follows runc: absolute paths are
        taken from each hierarchy's root, relative ones from this process's own cgroup (v1: the own
        cgroup of each controller; v2: the parent of the own cgroup), and an empty path means
        "<relative> container_id". linux.resources is validated here (CgroupError naming the JSON
        field). Returns None only when rootless, no cgroup can be created or joined and no resources
        are requested (runc's rootless behaviour); with resources requested it raises CgroupError.
        Must be called in the crate-runc process: relative paths depend on /proc/self/cgroup.

    m.create()                      make the cgroup directories (idempotent); a failed create
                                    removes what it made
    m.add(pid)                      move pid into every hierarchy (v1: each controller and the hybrid
                                    unified tree; v2: the one cgroup)
    m.set_resources(resources, update=False)
                                    write linux.resources. Device rules (plus runc's default allowed
                                    devices) are applied unless update=True: `crate-runc update`
                                    passes only the new values and never touches devices, as runc.
    m.pids() -> list[int]           every pid in the cgroup tree (ps, kill --all)
    m.freeze() / m.thaw() / m.is_frozen() -> bool     pause, resume, state "paused"
    m.stats() -> dict               the "data" object of `runc events --stats` (runc's field names)
    m.destroy()                     remove the cgroup directories (and parents this manager created)
                                    once empty, retrying briefly; CgroupError if processes remain
    m.to_state() -> dict            JSON-able, for the container's state.json
    Manager.from_state(d) -> Manager
    m.paths                         runc's "cgroup_paths": {controller: dir} (v2: {"": dir})

Order on `create`/`run`: manager_for(...) early (bad config fails before anything exists) ->
m.create() -> m.set_resources(linux.get("resources") or {}) -> fork the init -> m.add(init_pid)
before the init unshares its cgroup namespace (the namespace root is the cgroup it is in at that
moment) and before it does real work -> persist m.to_state(). (runc does create+add, then set;
both orders work, limits-first means the init never runs unlimited.) If anything after create()
fails, call m.destroy() so nothing is left behind. `exec`: Manager.from_state(d).add(pid).
`kill --all`: freeze, signal m.pids(), thaw (runc's order, so nothing forks in between).
`delete`: kill what m.pids() lists, then m.destroy().

features() is the "cgroup" part of `crate-runc features`; like runc it says what crate-runc
supports, not what this host mounts.

Only os, errno and time are imported here; ctypes comes in with crate_runc/bpf.py, and only when a
cgroup v2 device filter is attached.
"""
import errno
import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"
HYBRID_ROOT = "/sys/fs/cgroup/unified"


class CgroupError(Exception):
    """A cgroup problem, as one line naming the problem and the fix."""


def cgroup_mode():
    """"v2" (unified), "hybrid" (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified) or "v1".

    A cgroup2 root is recognised by its cgroup.controllers file: one stat instead of statfs(2),
    which the os module does not offer.
    """
    global _mode
    if _mode is None:
        if os.path.exists(CGROUP_ROOT + "/cgroup.controllers"):
            _mode = "v2"
        elif os.path.exists(HYBRID_ROOT + "/cgroup.controllers"):
            _mode = "hybrid"
        else:
            _mode = "v1"
    return _mode


_mode = None


def clean_path(path):
    """runc's utils.CleanPath: lexically clean; relative paths cannot climb above their start."""
    if not path:
        return ""
    path = _go_clean(path)
    if not path.startswith("/"):
        path = _go_clean("/" + path)[1:] or "."
    return path


def _go_clean(path):
    path = os.path.normpath(path)
    # POSIX normpath keeps a leading "//"; Go's filepath.Clean does not
    return "/" + path.lstrip("/") if path.startswith("//") else path


def inner_path(linux, container_id):
    """(cgroup path inside each hierarchy, whether linux.cgroupsPath gave it explicitly)."""
    raw = linux.get("cgroupsPath") or ""
    if not isinstance(raw, str):
        raise CgroupError(f"linux.cgroupsPath must be a string, got {raw!r}")
    inner = clean_path(raw) if raw else clean_path(container_id)
    if inner in ("", ".", "/"):
        raise CgroupError(f"linux.cgroupsPath {raw!r} names the parent or root cgroup itself; "
                          "give a path that names the container's own cgroup")
    return inner, bool(raw)


def own_cgroups():
    """This process's cgroups from /proc/self/cgroup: {controller or "name=x" or "": path}."""
    result = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(","):
                    result[controller] = parts[2]
    return result


def manager_for(linux, container_id, rootless):
    """The cgroup manager for a container, or None (see the module docstring)."""
    linux = linux or {}
    inner, explicit = inner_path(linux, container_id)
    resources = parse_resources(linux.get("resources") or {})
    defaults = default_device_rules(linux.get("devices") or [])
    if cgroup_mode() == "v2":
        return V2Manager.for_container(inner, explicit, resources, defaults, rootless)
    if resources.unified:
        raise CgroupError("linux.resources.unified needs cgroup v2, but this host uses cgroup v1; "
                          "remove it or use the matching v1 fields (memory, cpu, pids ...)")
    return V1Manager.for_container(inner, explicit, resources, defaults, rootless,
                                   hybrid=cgroup_mode() == "hybrid")


class Manager:
    """Common interface of V1Manager and V2Manager (see the module docstring)."""

    version = 0
    paths = {}

    def create(self):
        raise NotImplementedError

    def add(self, pid):
        raise NotImplementedError

    def set_resources(self, resources, update=False):
        raise NotImplementedError

    def pids(self):
        raise NotImplementedError

    def freeze(self):
        raise NotImplementedError

    def thaw(self):
        raise NotImplementedError

    def is_frozen(self):
        raise NotImplementedError

    def stats(self):
        raise NotImplementedError

    def destroy(self):
        raise NotImplementedError

    def to_state(self):
        raise NotImplementedError

    @staticmethod
    def from_state(d):
        version = d.get("version") if isinstance(d, dict) else None
        if version == 1:
            return V1Manager.restore(d)
        if version == 2:
            return V2Manager.restore(d)
        raise CgroupError(f"state.json has no valid cgroup record ({d!r}); "
                          "the container was made by another runtime: delete it with that runtime")


def features():
    """The "cgroup" object of `crate-runc features` (what crate-runc supports)."""
    return {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": True}


# ================================================================ device rules
_R, _W, _M = 1, 2, 4


class Rule(tuple):
    """(type, major, minor, perms, allow); a plain tuple subclass because typing is slow to import."""

    __slots__ = ()

    def __new__(cls, type, major, minor, perms, allow):
        return tuple.__new__(cls, (type, major, minor, perms, allow))

    type = property(lambda self: self[0])
    major = property(lambda self: self[1])
    minor = property(lambda self: self[2])
    perms = property(lambda self: self[3])
    allow = property(lambda self: self[4])

    def __repr__(self):
        return f"Rule{tuple(self)!r}"

    @classmethod
    def parse(cls, text, allow=True):
        """The inverse of cgroup_string: "c 1:3 rwm"."""
        kind, numbers, perms = text.split()
        major, minor = (-1 if n == "*" else int(n) for n in numbers.split(":"))
        return cls(kind, major, minor, perms, allow)

    def cgroup_string(self):
        major = "*" if self.major == -1 else str(self.major)
        minor = "*" if self.minor == -1 else str(self.minor)
        return f"{self.type} {major}:{minor} {self.perms}"


def perm_bits(perms):
    return (_R if "r" in perms else 0) | (_W if "w" in perms else 0) | (_M if "m" in perms else 0)


def perm_string(bits):
    return ("r" if bits & _R else "") + ("w" if bits & _W else "") + ("m" if bits & _M else "")


class DeviceRuleError(ValueError):
    pass


class Emulator:
    """The state of a devices cgroup: default allow/deny plus exceptions {(type, major, minor): bits}."""

    def __init__(self, default_allow=False, rules=None):
        self.default_allow = default_allow
        self.rules = dict(rules or {})

    def __eq__(self, other):
        return (isinstance(other, Emulator) and self.default_allow == other.default_allow
                and self.rules == other.rules)

    def __repr__(self):
        return f"Emulator(default_allow={self.default_allow}, rules={self.rules})"

    @classmethod
    def from_rules(cls, rules):
        emu = cls()
        for rule in rules:
            emu.apply(rule)
        return emu

    @classmethod
    def from_list(cls, text):
        """The state shown by a v1 devices.list (which lists allowed entries only)."""
        emu = cls()
        for line in text.splitlines():
            fields = line.replace(":", " ").split()
            if len(fields) != 4:
                raise DeviceRuleError(f"malformed devices.list line {line!r}")
            kind, major, minor, perms = fields
            if kind == "a":  # "a *:* rwm": the cgroup allows everything
                emu._reset(True)
                continue
            if kind not in ("b", "c") or perm_string(perm_bits(perms)) != perms or not perms:
                raise DeviceRuleError(f"malformed devices.list line {line!r}")
            emu._allow(kind, -1 if major == "*" else int(major), -1 if minor == "*" else int(minor),
                       perm_bits(perms))
        return emu

    def _reset(self, default_allow):
        self.default_allow = default_allow
        self.rules = {}

    def apply(self, rule):
        if rule.type == "a":
            self._reset(rule.allow)
        elif rule.allow:
            self._allow(rule.type, rule.major, rule.minor, perm_bits(rule.perms))
        else:
            self._deny(rule.type, rule.major, rule.minor, perm_bits(rule.perms))

    def _allow(self, kind, major, minor, bits):
        if self.default_allow:
            self._remove(kind, major, minor, bits)
        else:
            self._add(kind, major, minor, bits)

    def _deny(self, kind, major, minor, bits):
        if self.default_allow:
            self._add(kind, major, minor, bits)
        else:
            self._remove(kind, major, minor, bits)

    def _add(self, kind, major, minor, bits):
        key = (kind, major, minor)
        self.rules[key] = self.rules.get(key, 0) | bits

    def _remove(self, kind, major, minor, bits):
        key = (kind, major, minor)
        # the kernel silently ignores removing part of a wildcard exception; runc refuses instead,
        # so a rule never looks effective while it is not
        for partial in ((kind, -1, minor), (kind, major, -1), (kind, -1, -1)):
            if partial != key and self.rules.get(partial, 0) & bits:
                rule = Rule(kind, major, minor, perm_string(bits), True).cgroup_string()
                wide = Rule(*partial, perm_string(self.rules[partial]), True).cgroup_string()
                raise DeviceRuleError(f"rule '{rule}' would punch a hole in the wildcard rule "
                                      f"'{wide}', which the devices cgroup cannot do")
        left = self.rules.get(key, 0) & ~bits
        if left:
            self.rules[key] = left
        else:
            self.rules.pop(key, None)

    def transition(self, target):
        """The rules that turn this state into target, disrupting as little as possible."""
        out = []
        old = self.rules
        # devices.list cannot show deny exceptions, so an allow-all source needs a reset as well
        if self.default_allow or self.default_allow != target.default_allow:
            out.append(Rule("a", -1, -1, "rwm", target.default_allow))
            old = {}
        for (kind, major, minor), bits in _ordered(old):
            dropped = bits & ~target.rules.get((kind, major, minor), 0)
            if dropped:
                out.append(Rule(kind, major, minor, perm_string(dropped), target.default_allow))
        for (kind, major, minor), bits in _ordered(target.rules):
            gained = bits & ~old.get((kind, major, minor), 0)
            if gained:
                out.append(Rule(kind, major, minor, perm_string(gained), not target.default_allow))
        return out

    def minimal_rules(self):
        """The rules that reach this state from deny-all (runc's Emulator.Rules)."""
        return Emulator(False).transition(self)


def _ordered(rules):
    # runc sorts by (major, minor, type) so that the same rules are always written
    return sorted(rules.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))


# ================================================================ linux.resources
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_UINT32 = (0, (1 << 32) - 1)
_UINT16 = (0, (1 << 16) - 1)
_WHERE = "linux.resources"

# runc's specconv.AllowedDevices, appended after the config's own rules; an entry with a path is
# left out when linux.devices lists the same path (the config's device then takes priority)
_ALLOWED_DEVICES = (
    (None, Rule("c", -1, -1, "m", True)),
    (None, Rule("b", -1, -1, "m", True)),
    ("/dev/null", Rule("c", 1, 3, "rwm", True)),
    ("/dev/random", Rule("c", 1, 8, "rwm", True)),
    ("/dev/full", Rule("c", 1, 7, "rwm", True)),
    ("/dev/tty", Rule("c", 5, 0, "rwm", True)),
    ("/dev/zero", Rule("c", 1, 5, "rwm", True)),
    ("/dev/urandom", Rule("c", 1, 9, "rwm", True)),
    (None, Rule("c", 136, -1, "rwm", True)),   # /dev/pts/*
    (None, Rule("c", 5, 2, "rwm", True)),      # /dev/ptmx
    (None, Rule("c", 10, 200, "rwm", True)),   # /dev/net/tun
)


def default_device_rules(linux_devices):
    """runc's default allowed device rules, minus the paths linux.devices redefines."""
    taken = {d.get("path") for d in linux_devices if isinstance(d, dict)}
    return [rule for path, rule in _ALLOWED_DEVICES if path is None or path not in taken]


class Resources:
    """Flattened linux.resources (runc's configs.Resources)."""

    def __init__(self):
        self.memory = self.memory_reservation = self.memory_swap = 0
        self.memory_swappiness = None
        self.oom_kill_disable = False
        self.cpu_shares = self.cpu_weight = self.cpu_quota = self.cpu_period = 0
        self.cpu_rt_runtime = self.cpu_rt_period = 0
        self.cpuset_cpus = self.cpuset_mems = ""
        self.pids_limit = 0
        self.blkio_weight = self.blkio_leaf_weight = 0
        self.blkio_weight_device = []      # (major, minor, weight, leaf_weight)
        self.blkio_throttle = {}           # v1 file suffix -> [(major, minor, rate)]
        self.hugetlb = []                  # (page size, limit)
        self.net_cls_classid = 0
        self.net_prio = []                 # (interface, priority)
        self.rdma = {}                     # device -> (hca handles or None, hca objects or None)
        self.unified = {}
        self.devices = []                  # Rule, from the config only

    def v1_requested(self):
        """v1 controllers that setting these resources writes to (devices aside)."""
        wanted = set()
        if (self.memory or self.memory_swap or self.memory_reservation or self.oom_kill_disable
                or self.memory_swappiness not in (None, -1)):
            wanted.add("memory")
        if self.cpu_shares or self.cpu_quota or self.cpu_period or self.cpu_rt_runtime or self.cpu_rt_period:
            wanted.add("cpu")
        if self.cpuset_cpus or self.cpuset_mems:
            wanted.add("cpuset")
        if self.pids_limit:
            wanted.add("pids")
        if (self.blkio_weight or self.blkio_leaf_weight or self.blkio_weight_device
                or any(self.blkio_throttle.values())):
            wanted.add("blkio")
        if self.hugetlb:
            wanted.add("hugetlb")
        if self.net_cls_classid:
            wanted.add("net_cls")
        if self.net_prio:
            wanted.add("net_prio")
        if self.rdma:
            wanted.add("rdma")
        return wanted

    def v2_requested(self):
        """v2 controllers these resources need (runc's isXxxSet checks), plus rdma/unified."""
        wanted = set()
        if self.pids_limit:
            wanted.add("pids")
        if self.memory or self.memory_swap or self.memory_reservation:
            wanted.add("memory")
        if self.blkio_weight or self.blkio_weight_device or any(self.blkio_throttle.values()):
            wanted.add("io")
        if self.cpu_weight or self.cpu_quota or self.cpu_period:
            wanted.add("cpu")
        if self.cpuset_cpus or self.cpuset_mems:
            wanted.add("cpuset")
        if self.hugetlb:
            wanted.add("hugetlb")
        if self.rdma:
            wanted.add("rdma")
        if self.unified:
            wanted.add("unified")
        return wanted


def rdma_line(device, limit):
    """A line for rdma.max: "mlx5_0 hca_handle=2 hca_object=2000" (unset fields left out)."""
    handles, objects = limit
    line = device
    if handles is not None:
        line += f" hca_handle={handles}"
    if objects is not None:
        line += f" hca_object={objects}"
    return line


def shares_to_weight(shares):
    """cpu.shares [2, 262144] -> cpu.weight [1, 10000] (runc's ConvertCPUSharesToCgroupV2Value)."""
    return 0 if shares == 0 else 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight):
    """blkio.weight [10, 1000] -> io.weight [1, 10000] (runc's ConvertBlkIOToIOWeightValue)."""
    return 0 if weight == 0 else 1 + (weight - 10) * 9999 // 990


def swap_to_v2(swap, memory):
    """OCI memory.swap (memory+swap) -> memory.swap.max; runc's ConvertMemorySwapToCgroupV2Value."""
    if memory == -1 and swap == 0:
        return -1  # unlimited memory and unset swap: unlimited swap too, as v1 does
    if swap in (-1, 0):
        return swap
    if memory in (0, -1):
        raise CgroupError(f"{_WHERE}.memory.swap={swap} needs a memory limit on cgroup v2 "
                          "(swap is memory+swap there): set linux.resources.memory.limit")
    if memory < 0:
        raise CgroupError(f"{_WHERE}.memory.limit={memory} is invalid: use -1 for unlimited or a byte count")
    if swap < memory:
        raise CgroupError(f"{_WHERE}.memory.swap={swap} is below memory.limit={memory}; swap is "
                          "memory+swap: set it to at least the memory limit (or -1)")
    return swap - memory


# ---------------------------------------------------------------- parsing
def _obj(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CgroupError(f"{where} must be an object, got {value!r}")
    return value


def _list(value, where):
    if value is None:
        return []
    if not isinstance(value, list):
        raise CgroupError(f"{where} must be a list, got {value!r}")
    return value


def _num(obj, key, where, bounds, default=0):
    value = obj.get(key)
    if value is None:
        return default
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CgroupError(f"{where}.{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _str(obj, key, where):
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CgroupError(f"{where}.{key} must be a string, got {value!r}")
    return value


def parse_device_rules(devices, where=_WHERE + ".devices"):
    rules = []
    for i, d in enumerate(_list(devices, where)):
        at = f"{where}[{i}]"
        d = _obj(d, at)
        allow = d.get("allow", False)
        if not isinstance(allow, bool):
            raise CgroupError(f"{at}.allow must be true or false, got {allow!r}")
        kind = d.get("type") or "a"
        if kind not in ("a", "b", "c"):
            raise CgroupError(f"{at}.type {kind!r} is not a cgroup device type: use a, b or c")
        major = _num(d, "major", at, (-1, _INT64[1]), -1)
        minor = _num(d, "minor", at, (-1, _INT64[1]), -1)
        access = d.get("access")
        if not access or not isinstance(access, str):
            raise CgroupError(f"{at}.access cannot be empty: give some of r (read), w (write), m (mknod)")
        if access.strip("rwm"):
            raise CgroupError(f"{at}.access {access!r} has letters other than r, w and m")
        rules.append(Rule(kind, major, minor, "".join(c for c in "rwm" if c in access), allow))
    return rules


def parse_resources(raw, where=_WHERE):
    """Validate linux.resources (or an update's resources object) into Resources."""
    res = Resources()
    raw = _obj(raw, where)
    res.devices = parse_device_rules(raw.get("devices"), where + ".devices")

    mem = _obj(raw.get("memory"), where + ".memory")
    at = where + ".memory"
    res.memory = _num(mem, "limit", at, _INT64)
    res.memory_reservation = _num(mem, "reservation", at, _INT64)
    res.memory_swap = _num(mem, "swap", at, _INT64)
    _num(mem, "kernel", at, _INT64)      # kernel memory limits are checked, then ignored (runc)
    _num(mem, "kernelTCP", at, _INT64)
    if mem.get("swappiness") is not None:
        swappiness = _num(mem, "swappiness", at, (-1, _UINT64[1]))
        if swappiness == _UINT64[1]:
            swappiness = -1  # (uint64)-1, how some clients say "unset"
        if swappiness > 100:
            raise CgroupError(f"{at}.swappiness={swappiness} is out of range: use 0-100")
        res.memory_swappiness = swappiness
    oom = mem.get("disableOOMKiller", False)
    if not isinstance(oom, bool):
        raise CgroupError(f"{at}.disableOOMKiller must be true or false, got {oom!r}")
    res.oom_kill_disable = oom

    cpu = _obj(raw.get("cpu"), where + ".cpu")
    at = where + ".cpu"
    res.cpu_shares = _num(cpu, "shares", at, _UINT64)
    res.cpu_weight = shares_to_weight(res.cpu_shares)
    res.cpu_quota = _num(cpu, "quota", at, _INT64)
    res.cpu_period = _num(cpu, "period", at, _UINT64)
    res.cpu_rt_runtime = _num(cpu, "realtimeRuntime", at, _INT64)
    res.cpu_rt_period = _num(cpu, "realtimePeriod", at, _UINT64)
    res.cpuset_cpus = _str(cpu, "cpus", at)
    res.cpuset_mems = _str(cpu, "mems", at)

    pids = _obj(raw.get("pids"), where + ".pids")
    res.pids_limit = _num(pids, "limit", where + ".pids", _INT64)

    blkio = _obj(raw.get("blockIO"), where + ".blockIO")
    at = where + ".blockIO"
    res.blkio_weight = _num(blkio, "weight", at, _UINT16)
    res.blkio_leaf_weight = _num(blkio, "leafWeight", at, _UINT16)
    for i, wd in enumerate(_list(blkio.get("weightDevice"), at + ".weightDevice")):
        wat = f"{at}.weightDevice[{i}]"
        wd = _obj(wd, wat)
        res.blkio_weight_device.append((_num(wd, "major", wat, _INT64), _num(wd, "minor", wat, _INT64),
                                        _num(wd, "weight", wat, _UINT16), _num(wd, "leafWeight", wat, _UINT16)))
    for key, suffix in (("throttleReadBpsDevice", "read_bps_device"), ("throttleWriteBpsDevice", "write_bps_device"),
                        ("throttleReadIOPSDevice", "read_iops_device"), ("throttleWriteIOPSDevice", "write_iops_device")):
        entries = []
        for i, td in enumerate(_list(blkio.get(key), f"{at}.{key}")):
            tat = f"{at}.{key}[{i}]"
            td = _obj(td, tat)
            entries.append((_num(td, "major", tat, _INT64), _num(td, "minor", tat, _INT64),
                            _num(td, "rate", tat, _UINT64)))
        res.blkio_throttle[suffix] = entries

    for i, hp in enumerate(_list(raw.get("hugepageLimits"), where + ".hugepageLimits")):
        hat = f"{where}.hugepageLimits[{i}]"
        hp = _obj(hp, hat)
        size = _str(hp, "pageSize", hat)
        if not size or "/" in size or size.startswith("."):
            raise CgroupError(f"{hat}.pageSize {size!r} is not a page size such as 2MB or 1GB")
        res.hugetlb.append((size, _num(hp, "limit", hat, _UINT64)))

    net = _obj(raw.get("network"), where + ".network")
    res.net_cls_classid = _num(net, "classID", where + ".network", _UINT32)
    for i, prio in enumerate(_list(net.get("priorities"), where + ".network.priorities")):
        pat = f"{where}.network.priorities[{i}]"
        prio = _obj(prio, pat)
        name = _str(prio, "name", pat)
        if not name or any(c.isspace() for c in name):
            raise CgroupError(f"{pat}.name {name!r} is not a network interface name")
        res.net_prio.append((name, _num(prio, "priority", pat, _UINT32)))

    for device, limits in _obj(raw.get("rdma"), where + ".rdma").items():
        rat = f"{where}.rdma.{device}"
        limits = _obj(limits, rat)
        if not device or any(c.isspace() for c in device):
            raise CgroupError(f"{rat}: {device!r} is not an RDMA device name")
        res.rdma[device] = (None if limits.get("hcaHandles") is None else _num(limits, "hcaHandles", rat, _UINT32),
                            None if limits.get("hcaObjects") is None else _num(limits, "hcaObjects", rat, _UINT32))

    for key, value in _obj(raw.get("unified"), where + ".unified").items():
        if not isinstance(value, str):
            raise CgroupError(f"{where}.unified.{key} must be a string, got {value!r}")
        if "/" in key or key in ("", ".", ".."):
            raise CgroupError(f"{where}.unified key {key!r} must be a cgroup file name (no slashes)")
        res.unified[key] = value
    return res


# ================================================================ cgroupfs files
def _read(directory, name):
    fd = os.open(f"{directory}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(fd)


def _read_int(directory, name):
    """An integer file; "max" reads as 2**64-1 like runc's GetCgroupParamUint."""
    text = _read(directory, name).strip()
    return (1 << 64) - 1 if text == "max" else int(text)


def _read_keyed(directory, name):
    """A "key value" per line file (memory.stat, cpu.stat ...) as {key: int}."""
    out = {}
    for line in _read(directory, name).splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = (1 << 64) - 1 if parts[1] == "max" else int(parts[1])
    return out


def _write_raw(directory, name, value):
    """Write value with one write(2), as the kernel wants; raises OSError."""
    fd = os.open(f"{directory}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(directory, name, value, field, hint=""):
    """Write a cgroup file; a refusal becomes a CgroupError naming the config field."""
    try:
        _write_raw(directory, name, value)
    except OSError as e:
        if e.errno == errno.ENOENT and not os.path.isdir(directory):
            raise CgroupError(f"cannot set {field}: cgroup {directory} does not exist "
                              "(was the container's cgroup removed?)") from None
        if e.errno == errno.ENOENT:
            raise CgroupError(f"cannot set {field}: {directory}/{name} does not exist: the kernel or "
                              f"this cgroup lacks that controller{hint or '; remove the setting'}") from None
        raise CgroupError(f"cannot set {field}: the kernel refused {value!r} for {directory}/{name} "
                          f"({os.strerror(e.errno)}){hint or '; check the value'}") from None


def _write_pid(directory, pid):
    """Move pid into the cgroup; raises OSError."""
    fd = os.open(f"{directory}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        for attempt in range(5):
            try:
                os.write(fd, str(pid).encode())
                return
            except OSError as e:
                # EINVAL may mean the task is still in TASK_NEW right after fork (runc retries too)
                if e.errno != errno.EINVAL or attempt == 4:
                    raise
                time.sleep(0.03)
    finally:
        os.close(fd)


def _procs(directory):
    try:
        return [int(line) for line in _read(directory, "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _tree_pids(directory):
    """Every pid in directory and its sub-cgroups (runc's GetAllPids)."""
    pids = _procs(directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return pids
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            pids += _tree_pids(entry.path)
    return pids


def _remove_tree(path):
    """rmdir a cgroup and its sub-cgroups, deepest first (runc's RemovePath); OSError on failure."""
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _remove_all(paths, parents=()):
    """Remove cgroup dirs, retrying 5 times with 10 ms doubling delays (runc's RemovePaths).

    Then remove the parents this container created, deepest first, when they are empty
    (runc leaves them behind; a parent another container still uses stays).
    """
    left = sorted(set(p for p in paths if p))
    delay = 0.01
    last = None
    for attempt in range(5):
        if attempt:
            time.sleep(delay)
            delay *= 2
        still = []
        for path in left:
            try:
                _remove_tree(path)
            except OSError as e:
                last = e
                still.append(path)
        left = still
        if not left:
            break
    if left:
        busy = {path: _tree_pids(path) for path in left}
        detail = "; ".join(f"{p} (pids {' '.join(map(str, pids)) or 'none'})" for p, pids in busy.items())
        reason = os.strerror(last.errno) if last and last.errno else "busy"
        raise CgroupError(f"cannot remove cgroup {detail}: {reason}; stop the processes left in it "
                          "(crate-runc kill --all) and delete again")
    for parent in sorted(set(parents), key=len, reverse=True):
        try:
            os.rmdir(parent)
        except OSError:
            pass  # not empty (another container) or already gone


def _makedirs(path, created):
    """mkdir -p, appending each directory actually made to created (for rollback/destroy)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _makedirs(parent, created)
    try:
        os.mkdir(path, 0o755)
        created.append(path)
    except FileExistsError:
        pass


def _rollback(created):
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass
    del created[:]


def _running_in_userns():
    """True when this process is in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


# ================================================================ cgroup v1
# runc's subsystem order: cgroups are made, joined and configured in this order
SUBSYSTEMS = ("cpuset", "devices", "memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb", "net_cls",
              "net_prio", "perf_event", "freezer", "rdma", "name=systemd")
NAMED = ("name=systemd", "")   # joined best effort, errors ignored (runc's NameGroup)
_IGNORABLE = (errno.EPERM, errno.EACCES, errno.EROFS)
_RESOURCE_FIELD = {"memory": "memory", "cpu": "cpu", "cpuset": "cpu.cpus/cpu.mems", "pids": "pids",
                   "blkio": "blockIO", "hugetlb": "hugepageLimits", "net_cls": "network.classID",
                   "net_prio": "network.priorities", "rdma": "rdma"}


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def v1_mounts():
    """{subsystem: (mount point, mount root)} of the cgroup v1 mounts; /sys/fs/cgroup ones first."""
    found = {}
    wanted = set(SUBSYSTEMS)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            fields = right.split()
            if not sep or len(fields) < 3 or fields[0] != "cgroup":
                continue
            mount = left.split()
            point, root = _unescape(mount[4]), _unescape(mount[3])
            for opt in fields[2].split(","):
                if opt in wanted:
                    best = found.get(opt)
                    if best is None or (not best[0].startswith("/sys/fs/cgroup/")
                                        and point.startswith("/sys/fs/cgroup/")):
                        found[opt] = (point, root)
    return found


def _usable(path):
    """Whether this process may create (or join) path: rootless needs a delegated tree."""
    if os.path.isdir(path):
        return os.access(path + "/cgroup.procs", os.W_OK, effective_ids=True)
    parent = os.path.dirname(path)
    while parent != "/" and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    return os.access(parent, os.W_OK, effective_ids=True)


class V1Manager(Manager):
    version = 1

    def __init__(self, paths, rootless=False, explicit=False, resources=None, default_devices=None,
                 parents=(), dropped=None):
        self.paths = dict(paths)          # subsystem ("" for hybrid unified) -> directory
        self.rootless = rootless
        self.explicit = explicit
        self.parents = list(parents)      # ancestors this manager created, removed by destroy()
        self._resources = resources       # linux.resources at create time (cpuset, realtime)
        self._default_devices = default_device_rules([]) if default_devices is None else default_devices
        self._dropped = dict(dropped or {})   # subsystem -> why it has no path

    # ------------------------------------------------------------ construction
    @classmethod
    def for_container(cls, inner, explicit, resources, default_devices, rootless, hybrid):
        mounts = v1_mounts()
        own = None if inner.startswith("/") else own_cgroups()
        paths, dropped = {}, {}
        for name in SUBSYSTEMS:
            mount = mounts.get(name)
            if mount is None:
                if name == "devices":
                    raise CgroupError("the devices cgroup controller is not mounted; crate-runc, like "
                                      "runc, will not run a container without device restrictions: "
                                      "mount it at /sys/fs/cgroup/devices")
                dropped[name] = "is not mounted on this host"
                continue
            point, root = mount
            if own is None:
                paths[name] = os.path.normpath(point + inner)
            elif name in own:
                # relative paths start at this process's own cgroup, seen from the mount's root
                paths[name] = os.path.normpath(os.path.join(point, os.path.relpath(own[name], root), inner))
            else:
                dropped[name] = "has no entry in /proc/self/cgroup"
        if hybrid:
            # runc joins the unified tree at the hybrid root + inner, ignoring its own v2 cgroup
            paths[""] = os.path.normpath(f"{HYBRID_ROOT}/{inner}")
        manager = cls(paths, rootless, explicit, resources, default_devices, dropped=dropped)
        if rootless:
            return manager._rootless_check(resources)
        return manager

    def _rootless_check(self, resources):
        unusable = {name: p for name, p in self.paths.items() if not _usable(p)}
        uid = os.geteuid()
        for name, path in unusable.items():
            if self.explicit and name not in NAMED:
                raise CgroupError(f"rootless: cannot create or join cgroup {path} (no write access for "
                                  f"uid {uid}); delegate it (chown it to the user) or remove linux.cgroupsPath")
            del self.paths[name]
            self._dropped[name] = f"is not writable by uid {uid} (rootless, cgroup not delegated)"
        wanted = resources.v1_requested()
        for name in SUBSYSTEMS:
            if name in wanted and name not in self.paths:
                raise CgroupError(f"rootless container cannot set linux.resources.{_RESOURCE_FIELD[name]}: "
                                  f"the {name} cgroup {self._dropped.get(name, 'is not available')}; "
                                  "delegate a cgroup to the user or remove those limits")
        if not self.paths:
            return None  # runc: rootless without permission and without limits runs cgroup-less
        return self

    def to_state(self):
        d = {"version": 1, "paths": dict(self.paths), "rootless": self.rootless,
             "explicit": self.explicit, "parents": list(self.parents)}
        defaults = default_device_rules([])
        if self._default_devices != defaults:
            d["default_devices"] = [r.cgroup_string() for r in self._default_devices]
        if self._dropped:
            d["dropped"] = dict(self._dropped)
        return d

    @classmethod
    def restore(cls, d):
        defaults = [Rule.parse(t) for t in d["default_devices"]] if "default_devices" in d else None
        return cls(d.get("paths") or {}, bool(d.get("rootless")), bool(d.get("explicit")),
                   None, defaults, d.get("parents") or (), d.get("dropped"))

    # ------------------------------------------------------------ create / add
    def _distinct(self):
        """(path, [subsystems]) in runc's order, each path once (co-mounted controllers share one)."""
        order = {}
        for name in SUBSYSTEMS + ("",):
            path = self.paths.get(name)
            if path is not None:
                order.setdefault(path, []).append(name)
        return list(order.items())

    def _skip_error(self, names, error):
        """Whether an error on these subsystems is ignored (and the path dropped), as runc does."""
        if all(n in NAMED for n in names):
            return True
        return (self.rootless and not self.explicit and isinstance(error, OSError)
                and error.errno in _IGNORABLE)

    def _drop(self, names, error):
        for name in names:
            self.paths.pop(name, None)
            self._dropped[name] = f"could not be created or joined ({os.strerror(error.errno)})"

    def create(self):
        created = []
        try:
            for path, names in self._distinct():
                try:
                    if "cpuset" in names:
                        self._create_cpuset(path, created)
                    else:
                        _makedirs(path, created)
                    if "cpu" in names and self._resources is not None:
                        self._set_realtime(path, self._resources)
                except OSError as e:
                    if self._skip_error(names, e):
                        if not all(n in NAMED for n in names):
                            self._drop(names, e)
                        continue
                    raise CgroupError(f"cannot create cgroup {path}: {os.strerror(e.errno)}"
                                      + self._permission_hint(e)) from None
        except BaseException:
            _rollback(created)
            raise
        leaves = set(self.paths.values())
        self.parents += [p for p in created if p not in leaves and p not in self.parents]

    def _permission_hint(self, error):
        if error.errno in _IGNORABLE:
            return ("; run as root or delegate the cgroup to this user" if os.geteuid()
                    else "; is /sys/fs/cgroup mounted read-only?")
        return ""

    def _create_cpuset(self, path, created):
        # a cpuset cgroup takes no tasks until cpus and mems are set: fill them from the parent
        # at every level made (runc's cpusetEnsureParent / cpusetCopyIfNeeded)
        chain = []
        current = path
        while not os.path.ismount(current) and current != "/":
            chain.append(current)
            current = os.path.dirname(current)
        for directory in reversed(chain):
            if not os.path.isdir(directory):
                os.mkdir(directory, 0o755)
                created.append(directory)
            if directory == path and self._resources is not None:
                self._set_cpuset(path, self._resources)
            self._cpuset_copy(directory, os.path.dirname(directory))

    @staticmethod
    def _cpuset_copy(directory, parent):
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(directory, name).strip():
                _write_raw(directory, name, _read(parent, name).strip() or "\n")

    def add(self, pid):
        for path, names in self._distinct():
            try:
                _write_pid(path, pid)
            except OSError as e:
                if self._skip_error(names, e):
                    if not all(n in NAMED for n in names):
                        self._drop(names, e)
                    continue
                raise CgroupError(f"cannot move pid {pid} into cgroup {path}: {os.strerror(e.errno)}"
                                  + self._permission_hint(e)) from None

    # ------------------------------------------------------------ resources
    def _need(self, name, field):
        path = self.paths.get(name)
        if path is None:
            why = self._dropped.get(name, "is not available")
            raise CgroupError(f"cannot set {field}: the {name} cgroup controller {why}; "
                              f"remove {field} from the config")
        return path

    def set_resources(self, resources, update=False):
        res = parse_resources(resources)
        if res.unified:
            raise CgroupError("linux.resources.unified needs cgroup v2, but this host uses cgroup v1; "
                              "remove it or use the matching v1 fields (memory, cpu, pids ...)")
        if res.cpuset_cpus or res.cpuset_mems:
            self._set_cpuset(self._need("cpuset", "linux.resources.cpu.cpus/mems"), res)
        if not update:
            self._set_devices(res)
        self._set_memory(res)
        self._set_cpu(res)
        if res.pids_limit:
            path = self._need("pids", "linux.resources.pids.limit")
            _write(path, "pids.max", "max" if res.pids_limit < 0 else str(res.pids_limit),
                   "linux.resources.pids.limit")
        self._set_blkio(res)
        if res.hugetlb:
            path = self._need("hugetlb", "linux.resources.hugepageLimits")
            for size, limit in res.hugetlb:
                _write(path, f"hugetlb.{size}.limit_in_bytes", str(limit),
                       f"linux.resources.hugepageLimits[{size}]", hint=hugepage_hint())
        if res.net_cls_classid:
            path = self._need("net_cls", "linux.resources.network.classID")
            _write(path, "net_cls.classid", str(res.net_cls_classid), "linux.resources.network.classID")
        if res.net_prio:
            path = self._need("net_prio", "linux.resources.network.priorities")
            for name, prio in res.net_prio:
                _write(path, "net_prio.ifpriomap", f"{name} {prio}", "linux.resources.network.priorities")
        if res.rdma:
            path = self._need("rdma", "linux.resources.rdma")
            for device, limit in res.rdma.items():
                _write(path, "rdma.max", rdma_line(device, limit), f"linux.resources.rdma.{device}")

    def _set_cpuset(self, path, res):
        for name, value, field in (("cpuset.cpus", res.cpuset_cpus, "linux.resources.cpu.cpus"),
                                   ("cpuset.mems", res.cpuset_mems, "linux.resources.cpu.mems")):
            if value:
                try:
                    allowed = _read(os.path.dirname(path), "cpuset.effective_" + name[7:]).strip()
                except OSError:
                    allowed = "?"
                _write(path, name, value, f"{field}={value!r}",
                       hint=f"; the parent cgroup allows {allowed}")

    def _set_devices(self, res):
        if _running_in_userns():
            return  # a user namespace cannot touch the devices cgroup; runc skips it too
        try:
            target = Emulator.from_rules(res.devices + self._default_devices)
        except DeviceRuleError as e:
            if self.rootless:
                return
            raise CgroupError(f"linux.resources.devices: {e}") from None
        path = self.paths.get("devices")
        if path is None:
            if self.rootless:
                return
            self._need("devices", "linux.resources.devices")
        try:
            current = Emulator.from_list(_read(path, "devices.list"))
            for rule in current.transition(target):
                _write_raw(path, "devices.allow" if rule.allow else "devices.deny", rule.cgroup_string())
            after = Emulator.from_list(_read(path, "devices.list"))
        except (OSError, DeviceRuleError) as e:
            if self.rootless:
                return  # runc ignores device errors for rootless containers
            reason = os.strerror(e.errno) if isinstance(e, OSError) else str(e)
            raise CgroupError(f"cannot set linux.resources.devices in {path}: {reason}") from None
        if (not target.default_allow and after != target) or after.default_allow != target.default_allow:
            if not self.rootless:
                raise CgroupError(f"the devices cgroup {path} does not match linux.resources.devices after "
                                  "writing it (a rule the kernel ignored?); check the device rules")

    def _set_memory(self, res):
        mem, swap = res.memory, res.memory_swap
        if not (mem or swap or res.memory_reservation or res.oom_kill_disable
                or res.memory_swappiness not in (None, -1)):
            return
        path = self._need("memory", "linux.resources.memory")
        if mem == -1 and swap == 0 and os.path.exists(path + "/memory.memsw.limit_in_bytes"):
            swap = -1  # unlimited memory with unset swap: unlimited swap too (runc)
        # memory <= memory+swap at every moment: raise swap first when the limit goes up
        swap_first = False
        if mem and swap:
            current = _read_int(path, "memory.limit_in_bytes")
            swap_first = swap == -1 or current < swap
        if swap_first:
            self._write_swap(path, swap)
            self._write_memory(path, mem)
        else:
            self._write_memory(path, mem)
            self._write_swap(path, swap)
        if res.memory_reservation:
            _write(path, "memory.soft_limit_in_bytes", str(res.memory_reservation),
                   "linux.resources.memory.reservation")
        if res.oom_kill_disable:
            _write(path, "memory.oom_control", "1", "linux.resources.memory.disableOOMKiller")
        if res.memory_swappiness not in (None, -1):
            _write(path, "memory.swappiness", str(res.memory_swappiness), "linux.resources.memory.swappiness")

    @staticmethod
    def _write_memory(path, value):
        if not value:
            return
        try:
            _write_raw(path, "memory.limit_in_bytes", str(value))
        except OSError as e:
            if e.errno == errno.EBUSY:
                usage = _read_int(path, "memory.usage_in_bytes")
                peak = _read_int(path, "memory.max_usage_in_bytes")
                raise CgroupError(f"cannot set linux.resources.memory.limit to {value}: the container already "
                                  f"uses {usage} bytes (peak {peak}); raise the limit") from None
            hint = ("; memory.limit must not exceed memory.swap (memory+swap)" if e.errno == errno.EINVAL else "")
            raise CgroupError(f"cannot set linux.resources.memory.limit to {value} in {path}: "
                              f"{os.strerror(e.errno)}{hint}") from None

    @staticmethod
    def _write_swap(path, value):
        if value:
            _write(path, "memory.memsw.limit_in_bytes", str(value), "linux.resources.memory.swap",
                   hint="; memory.swap is memory+swap and must be >= memory.limit (or -1); "
                           "without swap accounting (swapaccount=1) it cannot be set")

    def _set_cpu(self, res):
        if not (res.cpu_shares or res.cpu_period or res.cpu_quota or res.cpu_rt_period or res.cpu_rt_runtime):
            return
        path = self._need("cpu", "linux.resources.cpu")
        if res.cpu_shares:
            _write(path, "cpu.shares", str(res.cpu_shares), "linux.resources.cpu.shares")
            actual = _read_int(path, "cpu.shares")
            if res.cpu_shares != actual:
                bound = "maximum" if res.cpu_shares > actual else "minimum"
                raise CgroupError(f"linux.resources.cpu.shares={res.cpu_shares} is out of range: "
                                  f"the {bound} allowed cpu-shares is {actual}")
        pending_period = ""
        if res.cpu_period:
            try:
                _write_raw(path, "cpu.cfs_period_us", str(res.cpu_period))
            except OSError as e:
                # the new period may clash with the old quota: retry after writing the quota
                if e.errno != errno.EINVAL or not res.cpu_quota:
                    _write(path, "cpu.cfs_period_us", str(res.cpu_period), "linux.resources.cpu.period")
                pending_period = str(res.cpu_period)
        if res.cpu_quota:
            _write(path, "cpu.cfs_quota_us", str(res.cpu_quota), "linux.resources.cpu.quota")
            if pending_period:
                _write(path, "cpu.cfs_period_us", pending_period, "linux.resources.cpu.period")
        self._set_realtime(path, res)

    @staticmethod
    def _set_realtime(path, res):
        hint = "; the parent cgroup's cpu.rt_runtime_us must leave room for it"
        if res.cpu_rt_period:
            _write(path, "cpu.rt_period_us", str(res.cpu_rt_period), "linux.resources.cpu.realtimePeriod", hint)
        if res.cpu_rt_runtime:
            _write(path, "cpu.rt_runtime_us", str(res.cpu_rt_runtime), "linux.resources.cpu.realtimeRuntime", hint)

    def _set_blkio(self, res):
        throttles = [(k, v) for k, v in res.blkio_throttle.items() if v]
        if not (res.blkio_weight or res.blkio_leaf_weight or res.blkio_weight_device or throttles):
            return
        field = "linux.resources.blockIO"
        path = self._need("blkio", field)
        if os.path.exists(path + "/blkio.weight"):
            weight, weight_device = "blkio.weight", "blkio.weight_device"
        else:
            weight, weight_device = "blkio.bfq.weight", "blkio.bfq.weight_device"
        if res.blkio_weight:
            _write(path, weight, str(res.blkio_weight), field + ".weight")
        if res.blkio_leaf_weight:
            _write(path, "blkio.leaf_weight", str(res.blkio_leaf_weight), field + ".leafWeight")
        for major, minor, dev_weight, leaf in res.blkio_weight_device:
            if dev_weight:
                _write(path, weight_device, f"{major}:{minor} {dev_weight}", field + ".weightDevice")
            if leaf:
                _write(path, "blkio.leaf_weight_device", f"{major}:{minor} {leaf}", field + ".weightDevice")
        names = {"read_bps_device": "throttleReadBpsDevice", "write_bps_device": "throttleWriteBpsDevice",
                 "read_iops_device": "throttleReadIOPSDevice", "write_iops_device": "throttleWriteIOPSDevice"}
        for suffix, entries in throttles:
            for major, minor, rate in entries:
                _write(path, "blkio.throttle." + suffix, f"{major}:{minor} {rate}", f"{field}.{names[suffix]}",
                       hint="; is it a block device (major:minor of a disk)?")

    # ------------------------------------------------------------ freezer
    def _freezer(self, action):
        path = self.paths.get("freezer")
        if path is None:
            why = self._dropped.get("freezer", "is not available")
            raise CgroupError(f"cannot {action} the container: the freezer cgroup controller {why}")
        return path

    def freeze(self):
        path = self._freezer("pause")
        try:
            for i in range(1000):
                # a task in a vfork or similar can hold FREEZING forever: thaw and retry now and then
                if i % 50 == 49:
                    _write_raw(path, "freezer.state", "THAWED")
                    time.sleep(0.01)
                _write_raw(path, "freezer.state", "FROZEN")
                if i % 25 == 24:
                    time.sleep(0.00001)
                state = _read(path, "freezer.state").strip()
                if state == "FROZEN":
                    return
                if state != "FREEZING":
                    raise CgroupError(f"unexpected freezer state {state!r} in {path} while freezing")
            raise CgroupError(f"cannot freeze {path}: its processes stay FREEZING; retry the pause")
        except BaseException as e:
            try:
                _write_raw(path, "freezer.state", "THAWED")
            except OSError:
                pass
            if isinstance(e, OSError):
                raise CgroupError(f"cannot freeze {path}: {os.strerror(e.errno)}") from None
            raise

    def thaw(self):
        path = self._freezer("resume")
        try:
            _write_raw(path, "freezer.state", "THAWED")
        except OSError as e:
            raise CgroupError(f"cannot thaw {path}: {os.strerror(e.errno)}") from None

    def is_frozen(self):
        path = self.paths.get("freezer")
        if path is None:
            return False
        while True:
            try:
                state = _read(path, "freezer.state").strip()
            except OSError:
                return False
            if state == "FREEZING":
                time.sleep(0.001)
                continue
            if state != "FROZEN":
                return False
            # frozen because a parent is frozen does not make this container paused
            try:
                return _read(path, "freezer.self_freezing").strip() == "1"
            except OSError:
                return True

    # ------------------------------------------------------------ processes, stats, destroy
    def _main_path(self):
        for name in ("devices", "freezer", "pids", "memory", "cpu") + SUBSYSTEMS + ("",):
            if name in self.paths:
                return self.paths[name]
        return None

    def pids(self):
        path = self._main_path()
        return _tree_pids(path) if path else []

    def destroy(self):
        _remove_all(self.paths.values(), self.parents)

    def stats(self):
        return v1_stats(self.paths)


# ================================================================ cgroup v2
_DOMAIN = ("memory", "io", "cpu", "hugetlb")   # controllers that cannot live in a threaded subtree
_FIELD = {"pids": "pids.limit", "memory": "memory", "io": "blockIO", "cpu": "cpu.shares/quota/period",
          "cpuset": "cpu.cpus/mems", "hugetlb": "hugepageLimits", "rdma": "rdma", "unified": "unified"}


def _v2_num(value):
    """runc's numToStr: 0 is unset, -1 is "max"."""
    return "" if value == 0 else "max" if value == -1 else str(value)


class V2Manager(Manager):
    version = 2

    def __init__(self, path, root=CGROUP_ROOT, rootless=False, explicit=False, resources=None,
                 default_devices=None, parents=()):
        self.path = path
        self.root = root
        self.paths = {"": path}
        self.rootless = rootless
        self.explicit = explicit
        self.parents = list(parents)
        self._resources = resources
        self._default_devices = default_device_rules([]) if default_devices is None else default_devices

    @classmethod
    def for_container(cls, inner, explicit, resources, default_devices, rootless, root=CGROUP_ROOT):
        if inner.startswith("/"):
            path = root + inner
        else:
            # the own cgroup usually holds processes, so its children could not enable domain
            # controllers: runc starts from the parent of the own cgroup
            own = own_cgroups().get("", "/")
            path = os.path.join(root, os.path.dirname(own).lstrip("/"), inner)
        manager = cls(os.path.normpath(path), root, rootless, explicit, resources, default_devices)
        if rootless and not _usable(manager.path):
            uid = os.geteuid()
            if explicit:
                raise CgroupError(f"rootless: cannot create or join cgroup {manager.path} (no write access "
                                  f"for uid {uid}); delegate it to the user or remove linux.cgroupsPath")
            available = set(manager._root_controllers()) | {"rdma", "unified"}
            wanted = sorted(resources.v2_requested() & available)
            if wanted:
                raise CgroupError(f"rootless container cannot set linux.resources.{_FIELD[wanted[0]]}: "
                                  f"{manager.path} is not writable by uid {uid} (no delegated cgroup); "
                                  "run it in a delegated cgroup (e.g. systemd-run --user --scope -p "
                                  "Delegate=yes) or remove the limits")
            return None
        return manager

    def to_state(self):
        d = {"version": 2, "paths": {"": self.path}, "root": self.root, "rootless": self.rootless,
             "explicit": self.explicit, "parents": list(self.parents)}
        if self._default_devices != default_device_rules([]):
            d["default_devices"] = [r.cgroup_string() for r in self._default_devices]
        return d

    @classmethod
    def restore(cls, d):
        defaults = [Rule.parse(t) for t in d["default_devices"]] if "default_devices" in d else None
        return cls(d["paths"][""], d.get("root") or CGROUP_ROOT, bool(d.get("rootless")),
                   bool(d.get("explicit")), None, defaults, d.get("parents") or ())

    def _root_controllers(self):
        try:
            return _read(self.root, "cgroup.controllers").split()
        except OSError:
            return []

    def _controllers(self):
        try:
            return _read(self.path, "cgroup.controllers").split()
        except OSError:
            return []

    # ------------------------------------------------------------ create / add
    def create(self):
        if not self.path.startswith(self.root + "/"):
            raise CgroupError(f"cgroup path {self.path} is not under {self.root}")
        controllers = self._root_controllers()
        enable = " ".join("+" + c for c in controllers)
        wanted = self._resources.v2_requested() if self._resources is not None else set()
        domain = bool(wanted & set(_DOMAIN))
        elements = self.path[len(self.root) + 1:].split("/")
        created = []
        current = self.root
        try:
            for i in range(len(elements) + 1):
                if i > 0:
                    current = f"{current}/{elements[i - 1]}"
                    try:
                        os.mkdir(current, 0o755)
                        created.append(current)
                    except FileExistsError:
                        pass
                    self._check_type(current, domain)
                if i < len(elements) and enable:
                    # enable every controller on the way down; one by one if the batch is refused
                    try:
                        _write_raw(current, "cgroup.subtree_control", enable)
                    except OSError:
                        for c in controllers:
                            try:
                                _write_raw(current, "cgroup.subtree_control", "+" + c)
                            except OSError:
                                pass  # a missing controller shows up when a limit needs it
        except OSError as e:
            _rollback(created)
            hint = ("; run as root or delegate the cgroup to this user"
                    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "")
            raise CgroupError(f"cannot create cgroup {current}: {os.strerror(e.errno)}{hint}") from None
        except BaseException:
            _rollback(created)
            raise
        self.parents += [p for p in created if p != self.path and p not in self.parents]

    @staticmethod
    def _check_type(path, domain):
        try:
            kind = _read(path, "cgroup.type").strip()
        except OSError:
            return
        if kind == "domain invalid":
            # made under a cgroup with processes in it: only thread-aware controllers can work
            if domain:
                raise CgroupError(f"cannot use cgroup {path} for memory/io/cpu/hugetlb limits: it is in "
                                  "'domain invalid' state (its parent has processes); use another cgroupsPath")
            try:
                _write_raw(path, "cgroup.type", "threaded")
            except OSError:
                pass
        elif kind in ("domain threaded", "threaded") and domain:
            raise CgroupError(f"cannot use cgroup {path} for memory/io/cpu/hugetlb limits: it is {kind}; "
                              "use a cgroupsPath outside the threaded subtree")

    def add(self, pid):
        try:
            _write_pid(self.path, pid)
        except OSError as e:
            hint = ""
            if e.errno == errno.EBUSY:
                hint = "; the cgroup has controllers enabled for children, so it cannot hold processes"
            elif e.errno in (errno.EACCES, errno.EPERM):
                hint = "; run as root or delegate the cgroup (and its common ancestor) to this user"
            raise CgroupError(f"cannot move pid {pid} into cgroup {self.path}: {os.strerror(e.errno)}{hint}") from None

    # ------------------------------------------------------------ resources
    def _write(self, name, value, field, controller, hint=""):
        if controller not in self._controllers():
            hint = (f"; the {controller} controller is not enabled for {self.path} (enabled: "
                    f"{' '.join(self._controllers()) or 'none'}): enable it in the parent's "
                    f"cgroup.subtree_control or remove {field}")
        _write(self.path, name, value, field, hint)

    def set_resources(self, resources, update=False):
        res = parse_resources(resources)
        self._set_pids(res)
        self._set_memory(res)
        self._set_io(res)
        self._set_cpu(res, update)
        if not update:
            self._set_devices(res)
        if res.cpuset_cpus:
            self._write("cpuset.cpus", res.cpuset_cpus, "linux.resources.cpu.cpus", "cpuset")
        if res.cpuset_mems:
            self._write("cpuset.mems", res.cpuset_mems, "linux.resources.cpu.mems", "cpuset")
        for size, limit in res.hugetlb:
            self._write(f"hugetlb.{size}.max", str(limit), f"linux.resources.hugepageLimits[{size}]", "hugetlb",
                        hugepage_hint())
        for device, limit in res.rdma.items():
            self._write("rdma.max", rdma_line(device, limit), f"linux.resources.rdma.{device}", "rdma")
        self._set_unified(res.unified)

    def _set_pids(self, res):
        value = _v2_num(res.pids_limit)
        if value:
            self._write("pids.max", value, "linux.resources.pids.limit", "pids")

    def _set_memory(self, res):
        if not (res.memory or res.memory_swap or res.memory_reservation):
            return
        swap = swap_to_v2(res.memory_swap, res.memory)
        swap_value = _v2_num(swap)
        if not swap_value and swap == 0 and res.memory_swap > 0:
            swap_value = "0"   # memory+swap == memory: no swap at all
        if swap_value:
            self._write("memory.swap.max", swap_value, "linux.resources.memory.swap", "memory")
        if _v2_num(res.memory):
            self._write("memory.max", _v2_num(res.memory), "linux.resources.memory.limit", "memory")
        if _v2_num(res.memory_reservation):
            self._write("memory.low", _v2_num(res.memory_reservation), "linux.resources.memory.reservation", "memory")

    def _set_io(self, res):
        throttles = [(k, v) for k, v in res.blkio_throttle.items() if v]
        if not (res.blkio_weight or res.blkio_weight_device or throttles):
            return
        bfq = None
        if res.blkio_weight or res.blkio_weight_device:
            try:
                bfq = os.open(self.path + "/io.bfq.weight", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise CgroupError(f"cannot set linux.resources.blockIO.weight: {self.path}/io.bfq.weight: "
                                  f"{os.strerror(e.errno)}") from None
        try:
            if res.blkio_weight:
                if bfq is not None:  # BFQ takes the v1 range as is
                    self._fd_write(bfq, str(res.blkio_weight), "linux.resources.blockIO.weight")
                else:
                    self._write("io.weight", str(blkio_to_io_weight(res.blkio_weight)),
                                "linux.resources.blockIO.weight", "io")
            if bfq is not None and self._bfq_per_device(bfq):
                for major, minor, weight, _leaf in res.blkio_weight_device:
                    self._fd_write(bfq, f"{major}:{minor} {weight}\n", "linux.resources.blockIO.weightDevice")
        finally:
            if bfq is not None:
                os.close(bfq)
        keys = {"read_bps_device": ("rbps", "throttleReadBpsDevice"),
                "write_bps_device": ("wbps", "throttleWriteBpsDevice"),
                "read_iops_device": ("riops", "throttleReadIOPSDevice"),
                "write_iops_device": ("wiops", "throttleWriteIOPSDevice")}
        for suffix, entries in throttles:
            key, field = keys[suffix]
            for major, minor, rate in entries:
                self._write("io.max", f"{major}:{minor} {key}={rate}", f"linux.resources.blockIO.{field}", "io")

    @staticmethod
    def _bfq_per_device(fd):
        # io.bfq.weight reads "default N" (plus per-device lines) when it takes per-device weights
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            int(os.read(fd, 32).strip())
            return False
        except ValueError:
            return True

    def _fd_write(self, fd, value, field):
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise CgroupError(f"cannot set {field}: the kernel refused {value.strip()!r} for "
                              f"{self.path}/io.bfq.weight ({os.strerror(e.errno)})") from None

    def _set_cpu(self, res, update):
        if res.cpu_weight:
            self._write("cpu.weight", str(res.cpu_weight), "linux.resources.cpu.shares", "cpu")
        quota, period = res.cpu_quota, res.cpu_period
        if not (quota or period):
            return
        if update and not (quota and period):
            # runc update keeps the old half of quota/period when only one is given
            try:
                old_quota, old_period = _read(self.path, "cpu.max").split()
                quota = quota or (0 if old_quota == "max" else int(old_quota))
                period = period or int(old_period)
            except (OSError, ValueError):
                pass
        value = f"{quota if quota > 0 else 'max'} {period or 100000}"
        self._write("cpu.max", value, "linux.resources.cpu.quota/period", "cpu")

    def _set_devices(self, res):
        rules = res.devices + self._default_devices
        try:
            # the emulator gives v2 exactly v1's semantics (and refuses the same impossible rules)
            emulator = Emulator.from_rules(rules)
        except DeviceRuleError as e:
            if self.rootless:
                return
            raise CgroupError(f"linux.resources.devices: {e}") from None
        try:
            from crate_runc import bpf
            program = bpf.device_filter(emulator.minimal_rules(), emulator.default_allow)
            fd = os.open(self.path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
            try:
                bpf.set_cgroup_device_filter(fd, program)
            finally:
                os.close(fd)
        except OSError as e:
            # runc ignores this when rootless, in a user namespace, or when every rule allows rwm
            if self.rootless or _running_in_userns() or all(r.allow and r.perms == "rwm" for r in rules):
                return
            raise CgroupError(f"cannot attach the eBPF device filter for linux.resources.devices to "
                              f"{self.path}: {e.strerror}; crate-runc needs CAP_BPF/CAP_SYS_ADMIN for it") from None

    def _set_unified(self, unified):
        for key, value in unified.items():
            try:
                _write_raw(self.path, key, value)
            except OSError as e:
                controller = key.split(".", 1)[0]
                if e.errno in (errno.EPERM, errno.EACCES, errno.ENOENT):
                    if "." not in key:
                        raise CgroupError(f"linux.resources.unified key {key!r} must be a cgroup file name "
                                          "such as memory.high (CONTROLLER.PARAMETER)") from None
                    if controller != "cgroup" and controller not in self._controllers():
                        raise CgroupError(f"cannot set linux.resources.unified.{key}: the {controller} controller "
                                          f"is not available in {self.path} (enabled: "
                                          f"{' '.join(self._controllers()) or 'none'})") from None
                raise CgroupError(f"cannot set linux.resources.unified.{key}: the kernel refused {value!r} "
                                  f"({os.strerror(e.errno)})") from None

    # ------------------------------------------------------------ freezer
    def freeze(self):
        try:
            _write_raw(self.path, "cgroup.freeze", "1")
        except FileNotFoundError:
            raise CgroupError(f"cannot pause the container: {self.path}/cgroup.freeze is missing "
                              "(the cgroup v2 freezer needs Linux 5.2 or later)") from None
        except OSError as e:
            raise CgroupError(f"cannot pause the container: {self.path}/cgroup.freeze: {os.strerror(e.errno)}") from None
        if not self._wait_frozen():
            raise CgroupError(f"timed out after 10 s waiting for {self.path} to freeze; retry the pause")

    def thaw(self):
        try:
            _write_raw(self.path, "cgroup.freeze", "0")
        except FileNotFoundError:
            pass  # nothing can be frozen without cgroup.freeze
        except OSError as e:
            raise CgroupError(f"cannot resume the container: {self.path}/cgroup.freeze: {os.strerror(e.errno)}") from None

    def _wait_frozen(self):
        for _ in range(1000):
            try:
                events = _read_keyed(self.path, "cgroup.events")
            except OSError:
                return False
            if events.get("frozen") == 1:
                return True
            time.sleep(0.01)
        return False

    def is_frozen(self):
        try:
            state = _read(self.path, "cgroup.freeze").strip()
        except OSError:
            return False
        return state == "1" and self._wait_frozen()

    # ------------------------------------------------------------ processes, stats, destroy
    def pids(self):
        return _tree_pids(self.path)

    def stats(self):
        return v2_stats(self.path)

    def destroy(self):
        _remove_all([self.path], self.parents)


# ================================================================ stats
_MAX = (1 << 64) - 1


def huge_page_sizes():
    """Huge page sizes as the hugetlb controller names them ("2MB", "1GB"), runc's HugePageSizes."""
    sizes = []
    try:
        names = os.listdir("/sys/kernel/mm/hugepages")
    except OSError:
        return sizes
    for name in names:
        if name.startswith("hugepages-") and name.endswith("kB") and name[10:-2].isdigit():
            kb = int(name[10:-2])
            sizes.append(f"{kb >> 20}GB" if kb >= 1 << 20 else f"{kb >> 10}MB" if kb >= 1 << 10 else f"{kb}KB")
    return sizes


def hugepage_hint():
    return f"; this host's huge page sizes: {', '.join(huge_page_sizes()) or 'none'}"


def _nonzero(**fields):
    return {k: v for k, v in fields.items() if v}


def _memory_entry(limit=0, usage=0, peak=0, failcnt=0):
    entry = {"limit": limit}
    entry.update(_nonzero(usage=usage, max=peak))
    entry["failcnt"] = failcnt
    return entry


class _Stats:
    def __init__(self):
        self.total = self.kernel = self.user = 0
        self.percpu, self.percpu_kernel, self.percpu_user = [], [], []
        self.throttling = {}
        self.cpuset = {"cpu_exclusive": 0, "mem_hardwall": 0, "mem_exclusive": 0, "memory_migrate": 0,
                       "memory_spread_page": 0, "memory_spread_slab": 0, "memory_pressure": 0,
                       "sched_load_balance": 0, "sched_relax_domain_level": 0}
        self.cpus, self.mems = [], []
        self.memory = {"usage": _memory_entry(), "swap": _memory_entry(), "kernel": _memory_entry(),
                       "kernelTCP": _memory_entry()}
        self.cache = 0
        self.raw = {}
        self.pids = {}
        self.blkio = {}
        self.hugetlb = {}

    def result(self):
        usage = _nonzero(total=self.total, percpu=self.percpu, percpu_kernel=self.percpu_kernel,
                         percpu_user=self.percpu_user)
        usage.update(kernel=self.kernel, user=self.user)
        cpuset = dict(self.cpuset)
        cpuset = {**_nonzero(cpus=self.cpus), "cpu_exclusive": cpuset.pop("cpu_exclusive"),
                  **_nonzero(mems=self.mems), **cpuset}
        memory = {**_nonzero(cache=self.cache), **self.memory, **_nonzero(raw=self.raw)}
        return {"cpu": {"usage": usage, "throttling": self.throttling}, "cpuset": cpuset, "memory": memory,
                "pids": self.pids, "blkio": self.blkio, "hugetlb": self.hugetlb, "intel_rdt": {},
                "network_interfaces": None}


def _cpu_list(text):
    out = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += range(int(lo), int(hi) + 1)
        elif part:
            out.append(int(part))
    return out


def _optional(fn, *args):
    try:
        return fn(*args)
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------- v1
def v1_stats(paths):
    s = _Stats()
    path = paths.get("cpuset")
    if path:
        s.cpus = _optional(lambda: _cpu_list(_read(path, "cpuset.cpus"))) or []
        s.mems = _optional(lambda: _cpu_list(_read(path, "cpuset.mems"))) or []
        for key in list(s.cpuset):
            value = _optional(_read_int, path, "cpuset." + key)
            if value is not None:
                s.cpuset[key] = value
    path = paths.get("cpu")
    if path:
        stat = _optional(_read_keyed, path, "cpu.stat") or {}
        s.throttling = _nonzero(periods=stat.get("nr_periods"), throttledPeriods=stat.get("nr_throttled"),
                                throttledTime=stat.get("throttled_time"))
    path = paths.get("cpuacct")
    if path and os.path.isdir(path):
        _v1_cpuacct(s, path)
    path = paths.get("memory")
    if path and os.path.isdir(path):
        _v1_memory(s, path)
    path = paths.get("pids")
    if path and os.path.isdir(path):
        limit = _read_int(path, "pids.max")
        s.pids = _nonzero(current=_read_int(path, "pids.current"), limit=0 if limit == _MAX else limit)
    path = paths.get("blkio")
    if path and os.path.isdir(path):
        s.blkio = _v1_blkio(path)
    path = paths.get("hugetlb")
    if path and os.path.isdir(path):
        for size in huge_page_sizes():
            prefix = f"hugetlb.{size}."
            s.hugetlb[size] = {**_nonzero(usage=_read_int(path, prefix + "usage_in_bytes"),
                                          max=_read_int(path, prefix + "max_usage_in_bytes")),
                               "failcnt": _read_int(path, prefix + "failcnt")}
    return s.result()


def _v1_cpuacct(s, path):
    fields = _read(path, "cpuacct.stat").split()
    if len(fields) >= 4 and fields[0] == "user" and fields[2] == "system":
        # USER_HZ ticks to nanoseconds, as runc (which assumes 100 ticks per second)
        s.user = int(fields[1]) * 1000000000 // 100
        s.kernel = int(fields[3]) * 1000000000 // 100
    s.total = _read_int(path, "cpuacct.usage")
    s.percpu = [int(v) for v in _read(path, "cpuacct.usage_percpu").split()]
    all_cpus = _optional(_read, path, "cpuacct.usage_all")
    for line in (all_cpus or "").splitlines()[1:]:   # "cpu user system" per CPU after a header
        cols = line.split(" ")
        if len(cols) == 3:
            s.percpu_kernel.append(int(cols[2]))
            s.percpu_user.append(int(cols[1]))


def _v1_memory(s, path):
    raw = _optional(_read_keyed, path, "memory.stat")
    if raw is None:
        return
    s.raw = raw
    s.cache = raw.get("cache", 0)
    for key, module in (("usage", "memory"), ("swap", "memory.memsw"), ("kernel", "memory.kmem"),
                        ("kernelTCP", "memory.kmem.tcp")):
        usage = _optional(_read_int, path, module + ".usage_in_bytes")
        if usage is None:
            continue  # swap and kmem accounting are optional in the kernel
        s.memory[key] = _memory_entry(_read_int(path, module + ".limit_in_bytes"), usage,
                                      _read_int(path, module + ".max_usage_in_bytes"),
                                      _read_int(path, module + ".failcnt"))


_BLKIO_KEYS = {"sectors": "sectorsRecursive", "io_service_time": "ioServiceTimeRecursive",
               "io_wait_time": "ioWaitTimeRecursive", "io_merged": "ioMergedRecursive",
               "io_queued": "ioQueueRecursive", "time": "ioTimeRecursive",
               "io_serviced": "ioServicedRecursive", "io_service_bytes": "ioServiceBytesRecursive"}
_ALL_BLKIO = ("sectors", "io_service_time", "io_wait_time", "io_merged", "io_queued", "time",
              "io_serviced", "io_service_bytes")
# runc tries these file groups in order and takes the first whose first file has data
_BLKIO_GROUPS = (
    [(f"blkio.bfq.{n}_recursive", n) for n in _ALL_BLKIO],       # bfq with debug stats
    [(f"blkio.bfq.{n}_recursive", n) for n in ("io_serviced", "io_service_bytes")],
    [(f"blkio.{n}_recursive", n) for n in _ALL_BLKIO],           # cfq
    [(f"blkio.throttle.{n}_recursive", n) for n in ("io_serviced", "io_service_bytes")],
    [(f"blkio.throttle.{n}", n) for n in ("io_serviced", "io_service_bytes")],
)


def _blkio_entries(path, name):
    text = _optional(_read, path, name)
    entries = []
    for line in (text or "").splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) < 3:
            continue  # "Total N"
        op, value = (fields[2], fields[3]) if len(fields) == 4 else ("", fields[2])
        entries.append(_nonzero(major=int(fields[0]), minor=int(fields[1]), op=op, value=int(value)))
    return entries


def _v1_blkio(path):
    out = {}
    for group in _BLKIO_GROUPS:
        for i, (name, key) in enumerate(group):
            entries = _blkio_entries(path, name)
            if not entries:
                if i == 0:
                    break
                return out
            out[_BLKIO_KEYS[key]] = entries
        else:
            return out
    return out


# ---------------------------------------------------------------- v2
def v2_stats(path):
    s = _Stats()
    current = _optional(_read_int, path, "pids.current")
    if current is None:
        s.pids = _nonzero(current=len(_procs(path)))
    else:
        limit = _read_int(path, "pids.max")
        s.pids = _nonzero(current=current, limit=0 if limit == _MAX else limit)
    raw = _optional(_read_keyed, path, "memory.stat")
    if raw is not None:
        s.raw = raw
        s.cache = raw.get("file", 0)
        usage = _optional(_read_int, path, "memory.current")
        if usage is not None:
            limit = _read_int(path, "memory.max")
            s.memory["usage"] = _memory_entry(limit, usage)
            swap = _optional(_read_int, path, "memory.swap.current")
            if swap is not None:
                swap_limit = _read_int(path, "memory.swap.max")
                if swap_limit != _MAX:
                    swap_limit = (swap_limit + limit) & _MAX   # uint64 arithmetic, as runc
                s.memory["swap"] = _memory_entry(swap_limit, swap + usage)
    io = _optional(_read, path, "io.stat")
    blkio = {}
    for line in (io or "").splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].count(":") != 1:
            continue
        major, minor = (int(n) for n in parts[0].split(":"))
        for item in parts[1:]:
            op, _, value = item.partition("=")
            key = {"rbytes": "ioServiceBytesRecursive", "wbytes": "ioServiceBytesRecursive",
                   "rios": "ioServicedRecursive", "wios": "ioServicedRecursive"}.get(op)
            if key:
                blkio.setdefault(key, []).append(
                    _nonzero(major=major, minor=minor, op="Read" if op[0] == "r" else "Write", value=int(value)))
    s.blkio = blkio
    stat = _optional(_read_keyed, path, "cpu.stat") or {}
    s.total = stat.get("usage_usec", 0) * 1000
    s.user = stat.get("user_usec", 0) * 1000
    s.kernel = stat.get("system_usec", 0) * 1000
    s.throttling = _nonzero(periods=stat.get("nr_periods"), throttledPeriods=stat.get("nr_throttled"),
                            throttledTime=stat.get("throttled_usec", 0) * 1000)
    for size in huge_page_sizes():
        usage = _optional(_read_int, path, f"hugetlb.{size}.current")
        events = _optional(_read_keyed, path, f"hugetlb.{size}.events")
        if usage is None or events is None:
            break
        s.hugetlb[size] = {**_nonzero(usage=usage), "failcnt": events.get("max", 0)}
    return s.result()
