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
    m.fork_target() -> str | None   the cgroup2 directory (v2, or hybrid's unified) a child can be
                                    cloned straight into with CLONE_INTO_CGROUP
    m.enter(skip_v2=False)          move the calling single-threaded process in (v1 through `tasks`,
                                    which skips the kernel's slow global lock); skip_v2 when it was
                                    cloned into fork_target() already
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

Modules: paths (cgroup mode, cgroupsPath, /proc), fs (cgroupfs files), devices (device rules; v1
lists, v2 eBPF through bpf), resources (linux.resources validation and conversions), v1 and v2 (the
managers), v1_resources and v2_resources (writing linux.resources), stats. They build on the names
defined here (CgroupError, Manager, the two roots), so this file imports none of them at load time:
manager_for and Manager.from_state import what they need, and state, kill and delete load one
manager module and fs only. Only os, errno and time come from the standard library; ctypes comes in
with bpf, and only when a cgroup v2 device filter is attached.
"""
CGROUP_ROOT = "/sys/fs/cgroup"
HYBRID_ROOT = "/sys/fs/cgroup/unified"


class CgroupError(Exception):
    """A cgroup problem, as one line naming the problem and the fix."""


def manager_for(linux, container_id, rootless):
    """The cgroup manager for a container, or None (see the module docstring)."""
    from crate_runc.cgroups.devices import default_device_rules
    from crate_runc.cgroups.paths import cgroup_mode, inner_path
    from crate_runc.cgroups.resources import parse_resources, refuse_unified
    linux = linux or {}
    inner, explicit = inner_path(linux, container_id)
    resources = parse_resources(linux.get("resources") or {})
    defaults = default_device_rules(linux.get("devices") or [])
    if cgroup_mode() == "v2":
        from crate_runc.cgroups.v2 import V2Manager
        return V2Manager.for_container(inner, explicit, resources, defaults, rootless)
    refuse_unified(resources)
    from crate_runc.cgroups.v1 import V1Manager
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

    def fork_target(self):
        raise NotImplementedError

    def enter(self, skip_v2=False):
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
        # only the hierarchy the record names is imported (state, kill, delete need nothing else)
        if version == 1:
            from crate_runc.cgroups.v1 import V1Manager
            return V1Manager.restore(d)
        if version == 2:
            from crate_runc.cgroups.v2 import V2Manager
            return V2Manager.restore(d)
        raise CgroupError(f"state.json has no valid cgroup record ({d!r}); "
                          "the container was made by another runtime: delete it with that runtime")


def restored_default_devices(d):
    """The default device rules a manager's state recorded, or None (runc's own: the usual case,
    which spares state, kill and delete loading the devices module)."""
    if "default_devices" not in d:
        return None
    from crate_runc.cgroups.devices import defaults_from_state
    return defaults_from_state(d)


def features():
    """The "cgroup" object of `crate-runc features` (what crate-runc supports)."""
    return {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": True}
