"""cgroup v1 (and the hybrid layout's unified tree) through cgroupfs, as runc 1.1's fs driver.

V1Manager finds each controller's mount, makes and joins one cgroup per hierarchy, freezes through
the freezer controller and removes what it made. Writing linux.resources (v1_resources), stats
(stats), and what only making a manager needs (paths, devices) are imported where they are used: a
manager restored from state.json (state, kill, delete) runs on this module and fs alone.
"""
import errno
import os
import time

from crate_runc.cgroups import HYBRID_ROOT, CgroupError, Manager, fs, restored_default_devices

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


class V1Manager(Manager):
    version = 1

    def __init__(self, paths, rootless=False, explicit=False, resources=None, default_devices=None,
                 parents=(), dropped=None):
        self.paths = dict(paths)          # subsystem ("" for hybrid unified) -> directory
        self.rootless = rootless
        self.explicit = explicit
        self.parents = list(parents)      # ancestors this manager created, removed by destroy()
        self._resources = resources       # linux.resources at create time (cpuset, realtime)
        self.default_devices = default_devices   # None: runc's own (see devices.with_defaults)
        self._dropped = dict(dropped or {})   # subsystem -> why it has no path

    # ------------------------------------------------------------ construction
    @classmethod
    def for_container(cls, inner, explicit, resources, default_devices, rootless, hybrid):
        from crate_runc.cgroups.paths import own_cgroups
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
        from crate_runc.cgroups.paths import usable
        unusable = {name: p for name, p in self.paths.items() if not usable(p)}
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
        from crate_runc.cgroups import devices
        d = {"version": 1, "paths": dict(self.paths), "rootless": self.rootless,
             "explicit": self.explicit, "parents": list(self.parents)}
        devices.defaults_to_state(self.default_devices, d)
        if self._dropped:
            d["dropped"] = dict(self._dropped)
        return d

    @classmethod
    def restore(cls, d):
        defaults = restored_default_devices(d)
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

    def _tolerate(self, names, error):
        """Whether an error on these subsystems is ignored, as runc does: always for the named
        hierarchies; for a rootless container without cgroupsPath a permission error drops them."""
        if all(n in NAMED for n in names):
            return True
        if self.rootless and not self.explicit and error.errno in _IGNORABLE:
            for name in names:
                self.paths.pop(name, None)
                self._dropped[name] = f"could not be created or joined ({os.strerror(error.errno)})"
            return True
        return False

    def create(self):
        from crate_runc.cgroups import v1_resources   # cpuset and realtime values go in as cgroups are made
        created = []
        try:
            for path, names in self._distinct():
                try:
                    if "cpuset" in names:
                        v1_resources.create_cpuset(path, created, self._resources)
                    else:
                        fs.makedirs(path, created)
                    if "cpu" in names and self._resources is not None:
                        v1_resources.set_realtime(path, self._resources)
                except OSError as e:
                    if self._tolerate(names, e):
                        continue
                    raise CgroupError(f"cannot create cgroup {path}: {os.strerror(e.errno)}"
                                      + self._permission_hint(e)) from None
        except BaseException:
            fs.rollback(created)
            raise
        leaves = set(self.paths.values())
        self.parents += [p for p in created if p not in leaves and p not in self.parents]

    def _permission_hint(self, error):
        if error.errno in _IGNORABLE:
            return ("; run as root or delegate the cgroup to this user" if os.geteuid()
                    else "; is /sys/fs/cgroup mounted read-only?")
        return ""

    def add(self, pid):
        for path, names in self._distinct():
            try:
                fs.write_pid(path, pid)
            except OSError as e:
                if self._tolerate(names, e):
                    continue
                raise CgroupError(f"cannot move pid {pid} into cgroup {path}: {os.strerror(e.errno)}"
                                  + self._permission_hint(e)) from None

    def fork_target(self):
        """The hybrid cgroup2 directory a new process can be cloned straight into, or None."""
        return self.paths.get("")

    def enter(self, skip_v2=False):
        """Move the calling single-threaded process into every hierarchy (skip_v2: it was cloned
        into the cgroup2 one already). v1 hierarchies take "0" on `tasks`, which moves only the
        caller's thread and so avoids the kernel's slow global lock; the process must have no
        other threads."""
        for path, names in self._distinct():
            if names == [""]:
                if skip_v2:
                    continue
                try:
                    fs.write_self(path, "cgroup.procs")
                except OSError as e:
                    if not self._tolerate(names, e):
                        raise CgroupError(f"cannot join cgroup {path}: {os.strerror(e.errno)}"
                                          + self._permission_hint(e)) from None
                continue
            try:
                fs.write_self(path, "tasks")
            except OSError as e:
                if self._tolerate(names, e):
                    continue
                raise CgroupError(f"cannot join cgroup {path}: {os.strerror(e.errno)}"
                                  + self._permission_hint(e)) from None

    # ------------------------------------------------------------ resources
    def need(self, name, field):
        """The directory of controller name, or a CgroupError saying why field cannot be set."""
        path = self.paths.get(name)
        if path is None:
            why = self._dropped.get(name, "is not available")
            raise CgroupError(f"cannot set {field}: the {name} cgroup controller {why}; "
                              f"remove {field} from the config")
        return path

    def set_resources(self, resources, update=False):
        from crate_runc.cgroups import v1_resources
        v1_resources.set_resources(self, resources, update)

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
                    fs.write_raw(path, "freezer.state", "THAWED")
                    time.sleep(0.01)
                fs.write_raw(path, "freezer.state", "FROZEN")
                if i % 25 == 24:
                    time.sleep(0.00001)
                state = fs.read(path, "freezer.state").strip()
                if state == "FROZEN":
                    return
                if state != "FREEZING":
                    raise CgroupError(f"unexpected freezer state {state!r} in {path} while freezing")
            raise CgroupError(f"cannot freeze {path}: its processes stay FREEZING; retry the pause")
        except BaseException as e:
            try:
                fs.write_raw(path, "freezer.state", "THAWED")
            except OSError:
                pass
            if isinstance(e, OSError):
                raise CgroupError(f"cannot freeze {path}: {os.strerror(e.errno)}") from None
            raise

    def thaw(self):
        path = self._freezer("resume")
        try:
            fs.write_raw(path, "freezer.state", "THAWED")
        except OSError as e:
            raise CgroupError(f"cannot thaw {path}: {os.strerror(e.errno)}") from None

    def is_frozen(self):
        path = self.paths.get("freezer")
        if path is None:
            return False
        for _ in range(100):  # a moment for a pause in progress; `state` must not hang on it
            try:
                state = fs.read(path, "freezer.state").strip()
            except OSError:
                return False
            if state != "FREEZING":
                break
            time.sleep(0.001)
        if state not in ("FROZEN", "FREEZING"):
            return False
        # frozen because a parent is frozen does not make this container paused
        try:
            return fs.read(path, "freezer.self_freezing").strip() == "1"
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
        return fs.tree_pids(path) if path else []

    def destroy(self):
        fs.remove_all(self.paths.values(), self.parents)

    def stats(self):
        from crate_runc.cgroups.stats import v1_stats
        return v1_stats(self.paths)
