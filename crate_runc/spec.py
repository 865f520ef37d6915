"""config.json: load it fast, check what the runtime consumes, explain failures with the schema.

The fast path parses with the C JSON scanner and checks the type of every field crate-runc uses
(a few hundred dict lookups). Only when that check fails is the vendored runtime-spec schema
loaded (jsonschema costs ~70 ms), to name the first schema error by its JSON path.
"""
import os

from crate_runc import Error, fastjson

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


class ConfigError(Error):
    pass


# A small type description of the parts of config.json the runtime reads:
# a type, {key: description} for objects ("!key" = required), [description] for arrays,
# and MAP_OF_STR for string-to-string objects.
MAP_OF_STR = "map-of-str"


class uint:  # noqa: N801 - a type marker like int and str: a JSON integer 0 <= n < 2**32
    pass


ID_MAPPING = {"!containerID": uint, "!hostID": uint, "!size": uint}
HOOK = {"!path": str, "args": [str], "env": [str], "timeout": int}
SPEC = {
    "!ociVersion": str,
    "root": {"!path": str, "readonly": bool},
    "process": {
        "terminal": bool, "consoleSize": {"!height": int, "!width": int},
        "user": {"uid": uint, "gid": uint, "umask": uint, "additionalGids": [uint], "username": str},
        "args": [str], "commandLine": str, "env": [str], "!cwd": str,
        "capabilities": {"bounding": [str], "effective": [str], "inheritable": [str], "permitted": [str],
                         "ambient": [str]},
        "rlimits": [{"!type": str, "!soft": int, "!hard": int}],
        "noNewPrivileges": bool, "apparmorProfile": str, "oomScoreAdj": int, "selinuxLabel": str,
    },
    "hostname": str, "domainname": str,
    "mounts": [{"!destination": str, "type": str, "source": str, "options": [str],
                "uidMappings": [ID_MAPPING], "gidMappings": [ID_MAPPING]}],
    "hooks": {name: [HOOK] for name in ("prestart", "createRuntime", "createContainer", "startContainer",
                                         "poststart", "poststop")},
    "annotations": MAP_OF_STR,
    "linux": {
        "namespaces": [{"!type": str, "path": str}],
        "uidMappings": [ID_MAPPING], "gidMappings": [ID_MAPPING],
        "devices": [{"!type": str, "!path": str, "major": int, "minor": int, "fileMode": uint, "uid": uint,
                     "gid": uint}],
        "cgroupsPath": str, "resources": {}, "rootfsPropagation": str, "seccomp": {"!defaultAction": str},
        "sysctl": MAP_OF_STR, "maskedPaths": [str], "readonlyPaths": [str], "mountLabel": str,
    },
}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", uint: "an integer from 0 to 4294967295"}


def _path(parts):
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def check(value, spec=SPEC, where=()):
    """Raise ConfigError naming the first field whose type differs from `spec`."""
    if spec is MAP_OF_STR:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{_path(where)} must be an object of strings")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{_path(where)} must be an object")
        for key, sub in spec.items():
            name = key.lstrip("!")
            if name in value:
                check(value[name], sub, where + (name,))
            elif key[0] == "!":
                raise ConfigError(f"{_path(where + (name,))} is required")
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise ConfigError(f"{_path(where)} must be an array")
        for i, item in enumerate(value):
            check(item, spec[0], where + (i,))
    elif spec is uint:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
            raise ConfigError(f"{_path(where)} must be {TYPE_NAMES[uint]}")
    elif not isinstance(value, spec) or (spec is int and isinstance(value, bool)):
        raise ConfigError(f"{_path(where)} must be {TYPE_NAMES[spec]}")


def check_semantics(config):
    """What the schema cannot say but runc refuses."""
    process = config.get("process")
    if process is None:
        pass  # allowed at create (the runtime-spec's "required when start is called"); start refuses
    elif not process.get("args"):
        raise ConfigError("$.process.args must not be empty: name the program to run")
    elif not process["cwd"].startswith("/"):
        raise ConfigError(f"$.process.cwd must be an absolute path, not {process['cwd']!r}")
    if "root" not in config:
        raise ConfigError("$.root is required: give the path of the container's root filesystem")
    seen = set()
    for i, ns in enumerate(config.get("linux", {}).get("namespaces", [])):
        if ns["type"] not in NAMESPACE_TYPES:
            raise ConfigError(f"$.linux.namespaces[{i}].type: unknown namespace type {ns['type']!r}")
        if ns["type"] in seen:
            raise ConfigError(f"$.linux.namespaces[{i}]: namespace type {ns['type']!r} appears twice")
        seen.add(ns["type"])
    for i, m in enumerate(config.get("mounts", [])):
        if not m["destination"].startswith("/"):
            raise ConfigError(f"$.mounts[{i}].destination must be an absolute path, not {m['destination']!r}")
    for name, hooks in config.get("hooks", {}).items():
        for i, hook in enumerate(hooks):
            if "timeout" in hook and hook["timeout"] <= 0:
                raise ConfigError(f"$.hooks.{name}[{i}].timeout must be at least 1 second")


def schema_error(config):
    """The schema's first complaint about `config` as one line, or None."""
    try:
        import crate_schemas
    except ImportError:
        return None
    error = crate_schemas.first_error(config, "runtime-config")
    return None if error is None else f"{error.path}: {error.message}"


def load(bundle):
    """Read and check <bundle>/config.json; Error with one line naming the problem otherwise."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"no config.json in bundle {bundle!r}; `crate-runc spec` writes a default one") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        config = fastjson.loads(data)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    try:
        check(config)
        check_semantics(config)
    except ConfigError as e:
        detail = schema_error(config) or str(e)
        raise ConfigError(f"invalid {path}: {detail}") from None
    return config


def save_copy(config, path):
    with open(path, "w") as f:
        f.write(fastjson.dumps(config))


def default_spec(rootless=False):
    """The config.json `crate-runc spec` writes: runc's template (sh on a terminal, a read-only
    rootfs directory, the usual namespaces and masked paths). The rootless variant adds a user
    namespace mapping the caller to root, keeps the host network, binds /sys, and sets no
    cgroup device rules."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    config = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {s: list(caps) for s in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "crate",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if rootless:
        linux = config["linux"]
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
        del linux["resources"]
        mounts = config["mounts"]
        mounts[2]["options"].remove("gid=5")  # no group 5 is mapped in the user namespace
        mounts[5] = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    return config
