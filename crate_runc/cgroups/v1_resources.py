"""linux.resources written to cgroup v1 files, as runc 1.1's fs driver's Set: V1Manager.set_resources
(create, run and update), plus the cpuset and realtime values that go in while V1Manager.create makes
the cgroups.
"""
import errno
import os

from crate_runc.cgroups import CgroupError, devices, fs
from crate_runc.cgroups.paths import running_in_userns
from crate_runc.cgroups.resources import (THROTTLE_FIELDS, hugepage_hint, parse_resources, rdma_line,
                                          refuse_unified)


def set_resources(manager, resources, update=False):
    """Write linux.resources (a raw object) into manager's cgroups; see Manager.set_resources."""
    res = parse_resources(resources)
    refuse_unified(res)
    if res.cpuset_cpus or res.cpuset_mems:
        _set_cpuset(manager.need("cpuset", "linux.resources.cpu.cpus/mems"), res)
    if not update:
        _set_devices(manager, res)
    _set_memory(manager, res)
    _set_cpu(manager, res)
    if res.pids_limit:
        path = manager.need("pids", "linux.resources.pids.limit")
        fs.write(path, "pids.max", "max" if res.pids_limit < 0 else str(res.pids_limit),
                 "linux.resources.pids.limit")
    _set_blkio(manager, res)
    if res.hugetlb:
        path = manager.need("hugetlb", "linux.resources.hugepageLimits")
        for size, limit in res.hugetlb:
            fs.write(path, f"hugetlb.{size}.limit_in_bytes", str(limit),
                     f"linux.resources.hugepageLimits[{size}]", hint=hugepage_hint())
    if res.net_cls_classid:
        path = manager.need("net_cls", "linux.resources.network.classID")
        fs.write(path, "net_cls.classid", str(res.net_cls_classid), "linux.resources.network.classID")
    if res.net_prio:
        path = manager.need("net_prio", "linux.resources.network.priorities")
        for name, prio in res.net_prio:
            fs.write(path, "net_prio.ifpriomap", f"{name} {prio}", "linux.resources.network.priorities")
    if res.rdma:
        path = manager.need("rdma", "linux.resources.rdma")
        for device, limit in res.rdma.items():
            fs.write(path, "rdma.max", rdma_line(device, limit), f"linux.resources.rdma.{device}")


def _set_cpuset(path, res):
    for name, value, field in (("cpuset.cpus", res.cpuset_cpus, "linux.resources.cpu.cpus"),
                               ("cpuset.mems", res.cpuset_mems, "linux.resources.cpu.mems")):
        if value:
            try:
                allowed = fs.read(os.path.dirname(path), "cpuset.effective_" + name[7:]).strip()
            except OSError:
                allowed = "?"
            fs.write(path, name, value, f"{field}={value!r}",
                     hint=f"; the parent cgroup allows {allowed}")


def create_cpuset(path, created, res):
    """Make the cpuset cgroup path like fs.makedirs, with res's cpus and mems (res may be None).

    A cpuset cgroup takes no tasks until cpus and mems are set: fill them from the parent at every
    level made (runc's cpusetEnsureParent / cpusetCopyIfNeeded).
    """
    chain = []
    current = path
    while not os.path.ismount(current) and current != "/":
        chain.append(current)
        current = os.path.dirname(current)
    for directory in reversed(chain):
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o755)
            created.append(directory)
        if directory == path and res is not None:
            _set_cpuset(path, res)
        _cpuset_copy(directory, os.path.dirname(directory))


def _cpuset_copy(directory, parent):
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not fs.read(directory, name).strip():
            fs.write_raw(directory, name, fs.read(parent, name).strip() or "\n")


def _set_devices(manager, res):
    if running_in_userns():
        return  # a user namespace cannot touch the devices cgroup; runc skips it too
    target = devices.emulate(devices.with_defaults(res.devices, manager.default_devices), manager.rootless)
    if target is None:
        return
    path = manager.paths.get("devices")
    if path is None:
        if manager.rootless:
            return
        manager.need("devices", "linux.resources.devices")
    devices.write_v1(path, target, manager.rootless)


def _set_memory(manager, res):
    mem, swap = res.memory, res.memory_swap
    if not (mem or swap or res.memory_reservation or res.oom_kill_disable
            or res.memory_swappiness not in (None, -1)):
        return
    path = manager.need("memory", "linux.resources.memory")
    if mem == -1 and swap == 0 and os.path.exists(path + "/memory.memsw.limit_in_bytes"):
        swap = -1  # unlimited memory with unset swap: unlimited swap too (runc)
    # memory <= memory+swap at every moment: raise swap first when the limit goes up
    swap_first = False
    if mem and swap:
        current = fs.read_int(path, "memory.limit_in_bytes")
        swap_first = swap == -1 or current < swap
    if swap_first:
        _write_swap(path, swap)
        _write_memory(path, mem)
    else:
        _write_memory(path, mem)
        _write_swap(path, swap)
    if res.memory_reservation:
        fs.write(path, "memory.soft_limit_in_bytes", str(res.memory_reservation),
                 "linux.resources.memory.reservation")
    if res.oom_kill_disable:
        fs.write(path, "memory.oom_control", "1", "linux.resources.memory.disableOOMKiller")
    if res.memory_swappiness not in (None, -1):
        fs.write(path, "memory.swappiness", str(res.memory_swappiness), "linux.resources.memory.swappiness")


def _write_memory(path, value):
    if not value:
        return
    try:
        fs.write_raw(path, "memory.limit_in_bytes", str(value))
    except OSError as e:
        if e.errno == errno.EBUSY:
            usage = fs.read_int(path, "memory.usage_in_bytes")
            peak = fs.read_int(path, "memory.max_usage_in_bytes")
            raise CgroupError(f"cannot set linux.resources.memory.limit to {value}: the container already "
                              f"uses {usage} bytes (peak {peak}); raise the limit") from None
        hint = ("; memory.limit must not exceed memory.swap (memory+swap)" if e.errno == errno.EINVAL else "")
        raise CgroupError(f"cannot set linux.resources.memory.limit to {value} in {path}: "
                          f"{os.strerror(e.errno)}{hint}") from None


def _write_swap(path, value):
    if value:
        fs.write(path, "memory.memsw.limit_in_bytes", str(value), "linux.resources.memory.swap",
                 hint="; memory.swap is memory+swap and must be >= memory.limit (or -1); "
                      "without swap accounting (swapaccount=1) it cannot be set")


def _set_cpu(manager, res):
    if not (res.cpu_shares or res.cpu_period or res.cpu_quota or res.cpu_rt_period or res.cpu_rt_runtime):
        return
    path = manager.need("cpu", "linux.resources.cpu")
    if res.cpu_shares:
        fs.write(path, "cpu.shares", str(res.cpu_shares), "linux.resources.cpu.shares")
        actual = fs.read_int(path, "cpu.shares")
        if res.cpu_shares != actual:
            bound = "maximum" if res.cpu_shares > actual else "minimum"
            raise CgroupError(f"linux.resources.cpu.shares={res.cpu_shares} is out of range: "
                              f"the {bound} allowed cpu-shares is {actual}")
    pending_period = ""
    if res.cpu_period:
        try:
            fs.write_raw(path, "cpu.cfs_period_us", str(res.cpu_period))
        except OSError as e:
            # the new period may clash with the old quota: retry after writing the quota
            if e.errno != errno.EINVAL or not res.cpu_quota:
                fs.write(path, "cpu.cfs_period_us", str(res.cpu_period), "linux.resources.cpu.period")
            pending_period = str(res.cpu_period)
    if res.cpu_quota:
        fs.write(path, "cpu.cfs_quota_us", str(res.cpu_quota), "linux.resources.cpu.quota")
        if pending_period:
            fs.write(path, "cpu.cfs_period_us", pending_period, "linux.resources.cpu.period")
    set_realtime(path, res)


def set_realtime(path, res):
    """cpu.rt_period_us and cpu.rt_runtime_us (also written by V1Manager.create, before any task joins)."""
    hint = "; the parent cgroup's cpu.rt_runtime_us must leave room for it"
    if res.cpu_rt_period:
        fs.write(path, "cpu.rt_period_us", str(res.cpu_rt_period), "linux.resources.cpu.realtimePeriod", hint)
    if res.cpu_rt_runtime:
        fs.write(path, "cpu.rt_runtime_us", str(res.cpu_rt_runtime), "linux.resources.cpu.realtimeRuntime", hint)


def _set_blkio(manager, res):
    throttles = [(k, v) for k, v in res.blkio_throttle.items() if v]
    if not (res.blkio_weight or res.blkio_leaf_weight or res.blkio_weight_device or throttles):
        return
    field = "linux.resources.blockIO"
    path = manager.need("blkio", field)
    if os.path.exists(path + "/blkio.weight"):
        weight, weight_device = "blkio.weight", "blkio.weight_device"
    else:
        weight, weight_device = "blkio.bfq.weight", "blkio.bfq.weight_device"
    if res.blkio_weight:
        fs.write(path, weight, str(res.blkio_weight), field + ".weight")
    if res.blkio_leaf_weight:
        fs.write(path, "blkio.leaf_weight", str(res.blkio_leaf_weight), field + ".leafWeight")
    for major, minor, dev_weight, leaf in res.blkio_weight_device:
        if dev_weight:
            fs.write(path, weight_device, f"{major}:{minor} {dev_weight}", field + ".weightDevice")
        if leaf:
            fs.write(path, "blkio.leaf_weight_device", f"{major}:{minor} {leaf}", field + ".weightDevice")
    for suffix, entries in throttles:
        for major, minor, rate in entries:
            fs.write(path, "blkio.throttle." + suffix, f"{major}:{minor} {rate}",
                     f"{field}.{THROTTLE_FIELDS[suffix]}", hint="; is it a block device (major:minor of a disk)?")
