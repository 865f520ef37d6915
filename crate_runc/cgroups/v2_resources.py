"""linux.resources written to a cgroup v2 directory, as runc 1.1's fs2 driver's Set, for
V2Manager.set_resources (create, run and update); values are converted as runc does (resources.py).
"""
import errno
import os

from crate_runc.cgroups import CgroupError, devices, fs
from crate_runc.cgroups.resources import (THROTTLE_FIELDS, blkio_to_io_weight, hugepage_hint, parse_resources,
                                          rdma_line, swap_to_v2)

# blkio.throttle.<suffix> (v1) -> the io.max key
_IO_MAX_KEYS = {"read_bps_device": "rbps", "write_bps_device": "wbps", "read_iops_device": "riops",
                "write_iops_device": "wiops"}


def _v2_num(value):
    """runc's numToStr: 0 is unset, -1 is "max"."""
    return "" if value == 0 else "max" if value == -1 else str(value)


def _write(path, name, value, field, controller, hint=""):
    enabled = fs.controllers(path)
    if controller not in enabled:
        hint = (f"; the {controller} controller is not enabled for {path} (enabled: "
                f"{' '.join(enabled) or 'none'}): enable it in the parent's "
                f"cgroup.subtree_control or remove {field}")
    fs.write(path, name, value, field, hint)


def set_resources(manager, resources, update=False):
    """Write linux.resources (a raw object) into manager's cgroup; see Manager.set_resources."""
    res = parse_resources(resources)
    path = manager.path
    _set_pids(path, res)
    _set_memory(path, res)
    _set_io(path, res)
    _set_cpu(path, res, update)
    if not update:
        _set_devices(manager, res)
    if res.cpuset_cpus:
        _write(path, "cpuset.cpus", res.cpuset_cpus, "linux.resources.cpu.cpus", "cpuset")
    if res.cpuset_mems:
        _write(path, "cpuset.mems", res.cpuset_mems, "linux.resources.cpu.mems", "cpuset")
    for size, limit in res.hugetlb:
        _write(path, f"hugetlb.{size}.max", str(limit), f"linux.resources.hugepageLimits[{size}]", "hugetlb",
               hugepage_hint())
    for device, limit in res.rdma.items():
        _write(path, "rdma.max", rdma_line(device, limit), f"linux.resources.rdma.{device}", "rdma")
    _set_unified(path, res.unified)


def _set_pids(path, res):
    value = _v2_num(res.pids_limit)
    if value:
        _write(path, "pids.max", value, "linux.resources.pids.limit", "pids")


def _set_memory(path, res):
    if not (res.memory or res.memory_swap or res.memory_reservation):
        return
    swap = swap_to_v2(res.memory_swap, res.memory)
    swap_value = _v2_num(swap)
    if not swap_value and swap == 0 and res.memory_swap > 0:
        swap_value = "0"   # memory+swap == memory: no swap at all
    if swap_value:
        _write(path, "memory.swap.max", swap_value, "linux.resources.memory.swap", "memory")
    if _v2_num(res.memory):
        _write(path, "memory.max", _v2_num(res.memory), "linux.resources.memory.limit", "memory")
    if _v2_num(res.memory_reservation):
        _write(path, "memory.low", _v2_num(res.memory_reservation), "linux.resources.memory.reservation", "memory")


def _set_io(path, res):
    throttles = [(k, v) for k, v in res.blkio_throttle.items() if v]
    if not (res.blkio_weight or res.blkio_weight_device or throttles):
        return
    bfq = None
    if res.blkio_weight or res.blkio_weight_device:
        try:
            bfq = os.open(path + "/io.bfq.weight", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CgroupError(f"cannot set linux.resources.blockIO.weight: {path}/io.bfq.weight: "
                              f"{os.strerror(e.errno)}") from None
    try:
        if res.blkio_weight:
            if bfq is not None:  # BFQ takes the v1 range as is
                _fd_write(path, bfq, str(res.blkio_weight), "linux.resources.blockIO.weight")
            else:
                _write(path, "io.weight", str(blkio_to_io_weight(res.blkio_weight)),
                       "linux.resources.blockIO.weight", "io")
        if bfq is not None and _bfq_per_device(bfq):
            for major, minor, weight, _leaf in res.blkio_weight_device:
                _fd_write(path, bfq, f"{major}:{minor} {weight}\n", "linux.resources.blockIO.weightDevice")
    finally:
        if bfq is not None:
            os.close(bfq)
    for suffix, entries in throttles:
        for major, minor, rate in entries:
            _write(path, "io.max", f"{major}:{minor} {_IO_MAX_KEYS[suffix]}={rate}",
                   f"linux.resources.blockIO.{THROTTLE_FIELDS[suffix]}", "io")


def _bfq_per_device(fd):
    # io.bfq.weight reads "default N" (plus per-device lines) when it takes per-device weights
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        int(os.read(fd, 32).strip())
        return False
    except ValueError:
        return True


def _fd_write(path, fd, value, field):
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CgroupError(f"cannot set {field}: the kernel refused {value.strip()!r} for "
                          f"{path}/io.bfq.weight ({os.strerror(e.errno)})") from None


def _set_cpu(path, res, update):
    if res.cpu_weight:
        _write(path, "cpu.weight", str(res.cpu_weight), "linux.resources.cpu.shares", "cpu")
    quota, period = res.cpu_quota, res.cpu_period
    if not (quota or period):
        return
    if update and not (quota and period):
        # runc update keeps the old half of quota/period when only one is given
        try:
            old_quota, old_period = fs.read(path, "cpu.max").split()
            quota = quota or (0 if old_quota == "max" else int(old_quota))
            period = period or int(old_period)
        except (OSError, ValueError):
            pass
    value = f"{quota if quota > 0 else 'max'} {period or 100000}"
    _write(path, "cpu.max", value, "linux.resources.cpu.quota/period", "cpu")


def _set_devices(manager, res):
    rules = devices.with_defaults(res.devices, manager.default_devices)
    # the emulator gives v2 exactly v1's semantics (and refuses the same impossible rules)
    emulator = devices.emulate(rules, manager.rootless)
    if emulator is not None:
        devices.attach_v2(manager.path, emulator, rules, manager.rootless)


def _set_unified(path, unified):
    for key, value in unified.items():
        try:
            fs.write_raw(path, key, value)
        except OSError as e:
            controller = key.split(".", 1)[0]
            if e.errno in (errno.EPERM, errno.EACCES, errno.ENOENT):
                if "." not in key:
                    raise CgroupError(f"linux.resources.unified key {key!r} must be a cgroup file name "
                                      "such as memory.high (CONTROLLER.PARAMETER)") from None
                if controller != "cgroup" and controller not in fs.controllers(path):
                    raise CgroupError(f"cannot set linux.resources.unified.{key}: the {controller} controller "
                                      f"is not available in {path} (enabled: "
                                      f"{' '.join(fs.controllers(path)) or 'none'})") from None
            raise CgroupError(f"cannot set linux.resources.unified.{key}: the kernel refused {value!r} "
                              f"({os.strerror(e.errno)})") from None
