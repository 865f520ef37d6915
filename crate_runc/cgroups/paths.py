"""Where a container's cgroups go and what this host offers: the cgroup mode, linux.cgroupsPath
(runc's rules), this process's own cgroups (/proc/self/cgroup), whether a rootless process may use
a cgroup, whether this process is in a user namespace, and the huge page sizes.
"""
import os

from crate_runc.cgroups import CGROUP_ROOT, HYBRID_ROOT, CgroupError


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


def usable(path):
    """Whether this process may create (or join) path: rootless needs a delegated tree."""
    if os.path.isdir(path):
        return os.access(path + "/cgroup.procs", os.W_OK, effective_ids=True)
    parent = os.path.dirname(path)
    while parent != "/" and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    return os.access(parent, os.W_OK, effective_ids=True)


def running_in_userns():
    """True when this process is in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


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

