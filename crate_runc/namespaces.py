"""Which namespaces to join or create, and the user namespace's id maps."""
import os

from crate_runc import Error, linux

FLAGS = {
    "pid": linux.CLONE_NEWPID, "network": linux.CLONE_NEWNET, "mount": linux.CLONE_NEWNS,
    "ipc": linux.CLONE_NEWIPC, "uts": linux.CLONE_NEWUTS, "user": linux.CLONE_NEWUSER,
    "cgroup": linux.CLONE_NEWCGROUP, "time": linux.CLONE_NEWTIME,
}
PROC_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts", "user": "user",
              "cgroup": "cgroup", "time": "time"}


class Plan:
    """What stage 1 does: join `join` (user first), create `new_user`, then unshare `new_flags`."""

    def __init__(self, config, rootless):
        linux_cfg = config.get("linux", {})
        self.types = {}
        self.join = []
        self.new_flags = 0
        self.new_user = False
        for ns in linux_cfg.get("namespaces", []):
            kind, path = ns["type"], ns.get("path", "")
            self.types[kind] = path
            if path:
                self.join.append((kind, path))
            elif kind == "user":
                self.new_user = True
            else:
                self.new_flags |= FLAGS[kind]
        self.join.sort(key=lambda item: item[0] != "user")  # the user namespace decides the others' owner
        self.uid_mappings = linux_cfg.get("uidMappings", [])
        self.gid_mappings = linux_cfg.get("gidMappings", [])
        if rootless and "user" not in self.types:
            # rootless with no user namespace in the config: make one mapping us to root (as crun does)
            self.new_user = True
            self.types["user"] = ""
            self.uid_mappings = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
            self.gid_mappings = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        if self.new_user and not (self.uid_mappings and self.gid_mappings):
            raise Error("a new user namespace needs linux.uidMappings and linux.gidMappings in config.json")
        if (self.uid_mappings or self.gid_mappings) and not self.new_user:
            raise Error("linux.uidMappings/gidMappings are set but no new user namespace is requested; "
                        "add {\"type\": \"user\"} to linux.namespaces")

    def joining(self, init_pid):
        """The plan of an `exec`: join every namespace of the container's init, none new."""
        for kind, path in list(self.types.items()):
            self.types[kind] = path or f"/proc/{init_pid}/ns/{PROC_NAMES[kind]}"
        self.join = sorted(self.types.items(), key=lambda item: item[0] != "user")
        self.new_flags = 0
        self.new_user = False
        return self

    def has(self, kind):
        return kind in self.types

    def is_new(self, kind):
        return kind in self.types and not self.types[kind]

    def open_joins(self):
        """Open every namespace path now (in the runtime's view) -> [(kind, fd)]."""
        fds = []
        for kind, path in self.join:
            try:
                fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as e:
                raise Error(f"cannot open {kind} namespace {path!r}: {e.strerror}") from None
        return fds

    def host_id(self, container_id, mappings):
        """The host id of a container uid/gid, or None when it is not mapped (only checked for a
        user namespace we create; a joined one keeps its own maps)."""
        if not self.new_user:
            return container_id
        for m in mappings:
            if m["containerID"] <= container_id < m["containerID"] + m["size"]:
                return m["hostID"] + container_id - m["containerID"]
        return None


def _map_text(mappings):
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def _is_own_id_only(mappings, own):
    return len(mappings) == 1 and mappings[0]["hostID"] == own and mappings[0]["size"] == 1


def write_id_maps(pid, uid_mappings, gid_mappings):
    """Give process `pid` (just unshared into a new user namespace) its uid and gid maps.

    Root writes the maps directly. An unprivileged user may map only itself, after denying
    setgroups; anything wider goes through the setuid helpers newuidmap/newgidmap with the ranges
    in /etc/subuid and /etc/subgid.
    """
    if os.geteuid() == 0:
        _write(f"/proc/{pid}/uid_map", _map_text(uid_mappings))
        _write(f"/proc/{pid}/gid_map", _map_text(gid_mappings))
        return
    if _is_own_id_only(uid_mappings, os.geteuid()):
        _write(f"/proc/{pid}/uid_map", _map_text(uid_mappings))
    else:
        _helper("newuidmap", pid, uid_mappings)
    if _is_own_id_only(gid_mappings, os.getegid()):
        _write(f"/proc/{pid}/setgroups", "deny")
        _write(f"/proc/{pid}/gid_map", _map_text(gid_mappings))
    else:
        _helper("newgidmap", pid, gid_mappings)


def _write(path, text):
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise Error(f"cannot write {path} ({text.strip()!r}): {e.strerror}") from None


def _helper(program, pid, mappings):
    import shutil
    import subprocess
    path = shutil.which(program) or shutil.which(program, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not path:
        raise Error(f"mapping ranges of ids needs {program} (Debian: apt-get install uidmap)")
    args = [path, str(pid)]
    for m in mappings:
        args += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise Error(f"{program} failed: {done.stderr.strip() or done.returncode}; "
                    f"check /etc/sub{'uid' if program == 'newuidmap' else 'gid'} ranges for this user")
