"""The state directory: <root>/<id>/ holds state.json, a copy of config.json and exec.fifo.

A container's status is derived, never stored: its init pid plus that process's start time (so a
reused pid is not mistaken for the container), the exec.fifo (present until `start`) and the
cgroup freezer.
"""
import fcntl
import os

from crate_runc import Error, SPEC_VERSION, fastjson

STATE_FILE = "state.json"
CONFIG_COPY = "config.json"
FIFO = "exec.fifo"
SECCOMP_CACHE = ".seccomp-cache"  # compiled seccomp programs, under the root (ids cannot start with ".")
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def default_root():
    if os.geteuid() == 0:
        return "/run/crate-runc"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "crate-runc")
    return f"/tmp/crate-runc-{os.geteuid()}"


def check_id(container_id):
    """Container ids are [A-Za-z0-9][A-Za-z0-9_.-]* (so never '/', '..' or empty)."""
    if (not container_id or not container_id[0].isascii() or not container_id[0].isalnum()
            or not ID_CHARS.issuperset(container_id) or len(container_id) > 1024):
        raise Error(f"invalid container id {container_id!r}: use letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit")


def process_start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None when there is no such process
    or it is a zombie (a dead container init waiting to be reaped counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # the command name may contain spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class Container:
    """One container's state directory."""

    def __init__(self, root, container_id):
        check_id(container_id)
        self.root = root
        self.id = container_id
        self.dir = os.path.join(root, container_id)
        self.data = {}
        self._lock_fd = None

    # -- lifecycle of the directory
    @classmethod
    def new(cls, root, container_id):
        """Make the state directory; an existing one means the id is taken."""
        container = cls(root, container_id)
        os.makedirs(root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(container.dir, 0o711)
        except FileExistsError:
            raise Error(f"container {container_id!r} already exists; pick another id or "
                        f"`crate-runc delete {container_id}` first") from None
        return container

    @classmethod
    def load(cls, root, container_id):
        container = cls(root, container_id)
        try:
            container.data = fastjson.load_file(os.path.join(container.dir, STATE_FILE))
        except FileNotFoundError:
            raise Error(f"container {container_id!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise Error(f"container {container_id!r}: unreadable state ({e}); "
                        f"`crate-runc delete --force {container_id}` removes it") from None
        return container

    def save(self):
        tmp = os.path.join(self.dir, "." + STATE_FILE)
        with open(tmp, "w") as f:
            f.write(fastjson.dumps(self.data))
        os.rename(tmp, os.path.join(self.dir, STATE_FILE))

    def __enter__(self):
        """Serialise commands that change this container (start, delete) across processes."""
        self._lock_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self._lock_fd)
        self._lock_fd = None

    def remove(self):
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    @property
    def fifo(self):
        return os.path.join(self.dir, FIFO)

    # -- derived status
    @property
    def pid(self):
        return self.data.get("pid", 0)

    def init_alive(self):
        pid = self.pid
        return bool(pid) and process_start_time(pid) == self.data.get("start_time")

    def status(self, cgroup=None):
        if not self.init_alive():
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        if cgroup is not None and cgroup.is_frozen():
            return "paused"
        return "running"

    def oci_state(self, status):
        """The runtime-spec state document, with runc's extra fields (rootfs, created, owner)."""
        state = {
            "ociVersion": SPEC_VERSION,
            "id": self.id,
            "pid": self.pid if status != "stopped" else 0,
            "status": status,
            "bundle": self.data.get("bundle", ""),
            "rootfs": self.data.get("rootfs", ""),
            "created": self.data.get("created", ""),
            "owner": self.data.get("owner", ""),
        }
        if self.data.get("annotations"):
            state["annotations"] = self.data["annotations"]
        return state


def list_ids(root):
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.exists(os.path.join(root, n, STATE_FILE)))
