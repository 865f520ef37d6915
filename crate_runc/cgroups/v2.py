"""cgroup v2 (the unified hierarchy) through cgroupfs, as runc 1.1's fs2 driver.

V2Manager makes the container's one cgroup (enabling controllers on the way down), joins it, freezes
through cgroup.freeze and removes what it made. Writing linux.resources (v2_resources), stats
(stats), and what only making a manager needs (paths, devices) are imported where they are used: a
manager restored from state.json (state, kill, delete) runs on this module and fs alone.
"""
import errno
import os
import time

from crate_runc.cgroups import CGROUP_ROOT, CgroupError, Manager, fs, restored_default_devices

_DOMAIN = ("memory", "io", "cpu", "hugetlb")   # controllers that cannot live in a threaded subtree
_FIELD = {"pids": "pids.limit", "memory": "memory", "io": "blockIO", "cpu": "cpu.shares/quota/period",
          "cpuset": "cpu.cpus/mems", "hugetlb": "hugepageLimits", "rdma": "rdma", "unified": "unified"}


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
        self.default_devices = default_devices   # None: runc's own (see devices.with_defaults)

    @classmethod
    def for_container(cls, inner, explicit, resources, default_devices, rootless, root=CGROUP_ROOT):
        from crate_runc.cgroups.paths import own_cgroups, usable
        if inner.startswith("/"):
            path = root + inner
        else:
            # the own cgroup usually holds processes, so its children could not enable domain
            # controllers: runc starts from the parent of the own cgroup
            own = own_cgroups().get("", "/")
            path = os.path.join(root, os.path.dirname(own).lstrip("/"), inner)
        manager = cls(os.path.normpath(path), root, rootless, explicit, resources, default_devices)
        if rootless and not usable(manager.path):
            uid = os.geteuid()
            if explicit:
                raise CgroupError(f"rootless: cannot create or join cgroup {manager.path} (no write access "
                                  f"for uid {uid}); delegate it to the user or remove linux.cgroupsPath")
            available = set(fs.controllers(root)) | {"rdma", "unified"}
            wanted = sorted(resources.v2_requested() & available)
            if wanted:
                raise CgroupError(f"rootless container cannot set linux.resources.{_FIELD[wanted[0]]}: "
                                  f"{manager.path} is not writable by uid {uid} (no delegated cgroup); "
                                  "run it in a delegated cgroup (e.g. systemd-run --user --scope -p "
                                  "Delegate=yes) or remove the limits")
            return None
        return manager

    def to_state(self):
        from crate_runc.cgroups import devices
        d = {"version": 2, "paths": {"": self.path}, "root": self.root, "rootless": self.rootless,
             "explicit": self.explicit, "parents": list(self.parents)}
        devices.defaults_to_state(self.default_devices, d)
        return d

    @classmethod
    def restore(cls, d):
        defaults = restored_default_devices(d)
        return cls(d["paths"][""], d.get("root") or CGROUP_ROOT, bool(d.get("rootless")),
                   bool(d.get("explicit")), None, defaults, d.get("parents") or ())

    # ------------------------------------------------------------ create / add
    def create(self):
        if not self.path.startswith(self.root + "/"):
            raise CgroupError(f"cgroup path {self.path} is not under {self.root}")
        controllers = fs.controllers(self.root)
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
                        fs.write_raw(current, "cgroup.subtree_control", enable)
                    except OSError:
                        for c in controllers:
                            try:
                                fs.write_raw(current, "cgroup.subtree_control", "+" + c)
                            except OSError:
                                pass  # a missing controller shows up when a limit needs it
        except OSError as e:
            fs.rollback(created)
            hint = ("; run as root or delegate the cgroup to this user"
                    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "")
            raise CgroupError(f"cannot create cgroup {current}: {os.strerror(e.errno)}{hint}") from None
        except BaseException:
            fs.rollback(created)
            raise
        self.parents += [p for p in created if p != self.path and p not in self.parents]

    @staticmethod
    def _check_type(path, domain):
        try:
            kind = fs.read(path, "cgroup.type").strip()
        except OSError:
            return
        if kind == "domain invalid":
            # made under a cgroup with processes in it: only thread-aware controllers can work
            if domain:
                raise CgroupError(f"cannot use cgroup {path} for memory/io/cpu/hugetlb limits: it is in "
                                  "'domain invalid' state (its parent has processes); use another cgroupsPath")
            try:
                fs.write_raw(path, "cgroup.type", "threaded")
            except OSError:
                pass
        elif kind in ("domain threaded", "threaded") and domain:
            raise CgroupError(f"cannot use cgroup {path} for memory/io/cpu/hugetlb limits: it is {kind}; "
                              "use a cgroupsPath outside the threaded subtree")

    def add(self, pid):
        try:
            fs.write_pid(self.path, pid)
        except OSError as e:
            hint = ""
            if e.errno == errno.EBUSY:
                hint = "; the cgroup has controllers enabled for children, so it cannot hold processes"
            elif e.errno in (errno.EACCES, errno.EPERM):
                hint = "; run as root or delegate the cgroup (and its common ancestor) to this user"
            raise CgroupError(f"cannot move pid {pid} into cgroup {self.path}: {os.strerror(e.errno)}{hint}") from None

    def fork_target(self):
        """The directory a new process can be cloned straight into (CLONE_INTO_CGROUP)."""
        return self.path

    def enter(self, skip_v2=False):
        """Move the calling process into the cgroup, unless it was cloned into it (skip_v2)."""
        if skip_v2:
            return
        try:
            fs.write_self(self.path, "cgroup.procs")
        except OSError as e:
            raise CgroupError(f"cannot join cgroup {self.path}: {os.strerror(e.errno)}") from None

    # ------------------------------------------------------------ resources
    def set_resources(self, resources, update=False):
        from crate_runc.cgroups import v2_resources
        v2_resources.set_resources(self, resources, update)

    # ------------------------------------------------------------ freezer
    def freeze(self):
        try:
            fs.write_raw(self.path, "cgroup.freeze", "1")
        except FileNotFoundError:
            raise CgroupError(f"cannot pause the container: {self.path}/cgroup.freeze is missing "
                              "(the cgroup v2 freezer needs Linux 5.2 or later)") from None
        except OSError as e:
            raise CgroupError(f"cannot pause the container: {self.path}/cgroup.freeze: {os.strerror(e.errno)}") from None
        if not self._wait_frozen():
            raise CgroupError(f"timed out after 10 s waiting for {self.path} to freeze; retry the pause")

    def thaw(self):
        try:
            fs.write_raw(self.path, "cgroup.freeze", "0")
        except FileNotFoundError:
            pass  # nothing can be frozen without cgroup.freeze
        except OSError as e:
            raise CgroupError(f"cannot resume the container: {self.path}/cgroup.freeze: {os.strerror(e.errno)}") from None

    def _wait_frozen(self):
        for _ in range(1000):
            try:
                events = fs.read_keyed(self.path, "cgroup.events")
            except OSError:
                return False
            if events.get("frozen") == 1:
                return True
            time.sleep(0.01)
        return False

    def is_frozen(self):
        """Asked to freeze (pause waited for it to take effect; `state` must not wait)."""
        try:
            return fs.read(self.path, "cgroup.freeze").strip() == "1"
        except OSError:
            return False

    # ------------------------------------------------------------ processes, stats, destroy
    def pids(self):
        return fs.tree_pids(self.path)

    def stats(self):
        from crate_runc.cgroups.stats import v2_stats
        return v2_stats(self.path)

    def destroy(self):
        fs.remove_all([self.path], self.parents)
