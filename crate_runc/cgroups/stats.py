"""The "data" object of `runc events --stats` (runc's field names) from a container's cgroup files:
v1_stats for V1Manager.stats, v2_stats for V2Manager.stats. Imported only by those two.
"""
import os

from crate_runc.cgroups import fs
from crate_runc.cgroups.paths import huge_page_sizes

_MAX = fs.MAX_UINT64


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


def _pids(path, current):
    limit = fs.read_int(path, "pids.max")
    return _nonzero(current=current, limit=0 if limit == _MAX else limit)


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
        s.cpus = _optional(lambda: _cpu_list(fs.read(path, "cpuset.cpus"))) or []
        s.mems = _optional(lambda: _cpu_list(fs.read(path, "cpuset.mems"))) or []
        for key in list(s.cpuset):
            value = _optional(fs.read_int, path, "cpuset." + key)
            if value is not None:
                s.cpuset[key] = value
    path = paths.get("cpu")
    if path:
        stat = _optional(fs.read_keyed, path, "cpu.stat") or {}
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
        s.pids = _pids(path, fs.read_int(path, "pids.current"))
    path = paths.get("blkio")
    if path and os.path.isdir(path):
        s.blkio = _v1_blkio(path)
    path = paths.get("hugetlb")
    if path and os.path.isdir(path):
        for size in huge_page_sizes():
            prefix = f"hugetlb.{size}."
            s.hugetlb[size] = {**_nonzero(usage=fs.read_int(path, prefix + "usage_in_bytes"),
                                          max=fs.read_int(path, prefix + "max_usage_in_bytes")),
                               "failcnt": fs.read_int(path, prefix + "failcnt")}
    return s.result()


def _v1_cpuacct(s, path):
    fields = fs.read(path, "cpuacct.stat").split()
    if len(fields) >= 4 and fields[0] == "user" and fields[2] == "system":
        # USER_HZ ticks to nanoseconds, as runc (which assumes 100 ticks per second)
        s.user = int(fields[1]) * 1000000000 // 100
        s.kernel = int(fields[3]) * 1000000000 // 100
    s.total = fs.read_int(path, "cpuacct.usage")
    s.percpu = [int(v) for v in fs.read(path, "cpuacct.usage_percpu").split()]
    all_cpus = _optional(fs.read, path, "cpuacct.usage_all")
    for line in (all_cpus or "").splitlines()[1:]:   # "cpu user system" per CPU after a header
        cols = line.split(" ")
        if len(cols) == 3:
            s.percpu_kernel.append(int(cols[2]))
            s.percpu_user.append(int(cols[1]))


def _v1_memory(s, path):
    raw = _optional(fs.read_keyed, path, "memory.stat")
    if raw is None:
        return
    s.raw = raw
    s.cache = raw.get("cache", 0)
    for key, module in (("usage", "memory"), ("swap", "memory.memsw"), ("kernel", "memory.kmem"),
                        ("kernelTCP", "memory.kmem.tcp")):
        usage = _optional(fs.read_int, path, module + ".usage_in_bytes")
        if usage is None:
            continue  # swap and kmem accounting are optional in the kernel
        s.memory[key] = _memory_entry(fs.read_int(path, module + ".limit_in_bytes"), usage,
                                      fs.read_int(path, module + ".max_usage_in_bytes"),
                                      fs.read_int(path, module + ".failcnt"))


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
    text = _optional(fs.read, path, name)
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
    current = _optional(fs.read_int, path, "pids.current")
    if current is None:
        s.pids = _nonzero(current=len(fs.procs(path)))
    else:
        s.pids = _pids(path, current)
    raw = _optional(fs.read_keyed, path, "memory.stat")
    if raw is not None:
        s.raw = raw
        s.cache = raw.get("file", 0)
        usage = _optional(fs.read_int, path, "memory.current")
        if usage is not None:
            limit = fs.read_int(path, "memory.max")
            s.memory["usage"] = _memory_entry(limit, usage)
            swap = _optional(fs.read_int, path, "memory.swap.current")
            if swap is not None:
                swap_limit = fs.read_int(path, "memory.swap.max")
                if swap_limit != _MAX:
                    swap_limit = (swap_limit + limit) & _MAX   # uint64 arithmetic, as runc
                s.memory["swap"] = _memory_entry(swap_limit, swap + usage)
    io = _optional(fs.read, path, "io.stat")
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
    stat = _optional(fs.read_keyed, path, "cpu.stat") or {}
    s.total = stat.get("usage_usec", 0) * 1000
    s.user = stat.get("user_usec", 0) * 1000
    s.kernel = stat.get("system_usec", 0) * 1000
    s.throttling = _nonzero(periods=stat.get("nr_periods"), throttledPeriods=stat.get("nr_throttled"),
                            throttledTime=stat.get("throttled_usec", 0) * 1000)
    for size in huge_page_sizes():
        usage = _optional(fs.read_int, path, f"hugetlb.{size}.current")
        events = _optional(fs.read_keyed, path, f"hugetlb.{size}.events")
        if usage is None or events is None:
            break
        s.hugetlb[size] = {**_nonzero(usage=usage), "failcnt": events.get("max", 0)}
    return s.result()
