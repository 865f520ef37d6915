"""linux.resources: validation into a flat Resources object (runc's configs.Resources; a CgroupError
names the JSON field at fault) and the conversions both hierarchies' writers share (v1 cpu.shares and
blkio.weight to v2 weights, OCI memory+swap to v2 swap, rdma.max lines, huge page hints).

Needed only to create or update a container, never to look at or signal one.
"""
from crate_runc.cgroups import CgroupError
from crate_runc.cgroups.devices import Rule
from crate_runc.cgroups.paths import huge_page_sizes

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_UINT32 = (0, (1 << 32) - 1)
_UINT16 = (0, (1 << 16) - 1)
_WHERE = "linux.resources"

# blockIO throttle lists: v1 file suffix (blkio.throttle.<suffix>) -> the OCI field (parse order)
THROTTLE_FIELDS = {"read_bps_device": "throttleReadBpsDevice", "write_bps_device": "throttleWriteBpsDevice",
                   "read_iops_device": "throttleReadIOPSDevice", "write_iops_device": "throttleWriteIOPSDevice"}


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

def hugepage_hint():
    return f"; this host's huge page sizes: {', '.join(huge_page_sizes()) or 'none'}"


def refuse_unified(res):
    """cgroup v1 has no files for linux.resources.unified."""
    if res.unified:
        raise CgroupError("linux.resources.unified needs cgroup v2, but this host uses cgroup v1; "
                          "remove it or use the matching v1 fields (memory, cpu, pids ...)")


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
    for suffix, key in THROTTLE_FIELDS.items():
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
