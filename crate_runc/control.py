"""Commands that act on a container through its cgroup: pause, resume, ps, update, events."""
import os
import time

from crate_runc import Error, fastjson
from crate_runc.state import Container


def _with_cgroup(root, container_id, action):
    from crate_runc import container as lifecycle
    container = Container.load(root, container_id)
    cgroup = lifecycle.cgroup_of(container)
    if cgroup is None:
        raise Error(f"cannot {action} container {container_id!r}: it has no cgroup (rootless without a "
                    "delegated cgroup)")
    return container, cgroup


def pause(root, container_id):
    container, cgroup = _with_cgroup(root, container_id, "pause")
    status = container.status(cgroup)
    if status not in ("running", "created"):
        raise Error(f"cannot pause container {container_id!r}: it is {status}, not running")
    cgroup.freeze()


def resume(root, container_id):
    container, cgroup = _with_cgroup(root, container_id, "resume")
    status = container.status(cgroup)
    if status != "paused":
        raise Error(f"cannot resume container {container_id!r}: it is {status}, not paused")
    cgroup.thaw()


def pids(root, container_id):
    container, cgroup = _with_cgroup(root, container_id, "list the processes of")
    return sorted(cgroup.pids())


def ps_table(root, container_id, ps_args):
    """`ps` output (default -ef) limited to the container's processes, header kept (runc's way)."""
    import subprocess
    wanted = set(pids(root, container_id))
    done = subprocess.run(["ps"] + (ps_args or ["-ef"]), capture_output=True, text=True)
    if done.returncode != 0:
        raise Error(f"ps {' '.join(ps_args or ['-ef'])} failed: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    if not lines:
        return ""
    header = lines[0].split()
    if "PID" not in header:
        raise Error("ps output has no PID column; pass ps options that print one (e.g. -ef)")
    column = header.index("PID")
    kept = [lines[0]] + [line for line in lines[1:] if line.split()[column].isdigit()
                         and int(line.split()[column]) in wanted]
    return "\n".join(kept) + "\n"


# runc update flags -> (linux.resources section, key, converter)
UPDATE_FLAGS = {
    "--memory": ("memory", "limit", "bytes"), "--memory-reservation": ("memory", "reservation", "bytes"),
    "--memory-swap": ("memory", "swap", "bytes"), "--kernel-memory": ("memory", "kernel", "bytes"),
    "--kernel-memory-tcp": ("memory", "kernelTCP", "bytes"), "--cpu-shares": ("cpu", "shares", "int"),
    "--cpu-quota": ("cpu", "quota", "int"), "--cpu-period": ("cpu", "period", "int"),
    "--cpu-rt-period": ("cpu", "realtimePeriod", "int"), "--cpu-rt-runtime": ("cpu", "realtimeRuntime", "int"),
    "--cpuset-cpus": ("cpu", "cpus", "str"), "--cpuset-mems": ("cpu", "mems", "str"),
    "--pids-limit": ("pids", "limit", "int"), "--blkio-weight": ("blockIO", "weight", "int"),
}
UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _convert(flag, value, kind):
    text = value.strip().lower()
    try:
        if kind == "str":
            return value
        if kind == "bytes":
            if text == "-1":
                return -1
            number = text.rstrip("bkmgt")
            unit = text[len(number):].rstrip("b") or "b"
            return int(float(number) * UNITS[unit])
        return int(text)
    except (ValueError, KeyError):
        raise Error(f"invalid {flag} value {value!r}") from None


def update(root, container_id, resources_file=None, flags=None):
    """Change the container's limits: a linux.resources JSON document (-r FILE, - for stdin)
    and/or runc's flags; only what is given is written, device rules are never touched."""
    container, cgroup = _with_cgroup(root, container_id, "update")
    if container.status(cgroup) == "stopped":
        raise Error(f"cannot update container {container_id!r}: it has stopped")
    resources = {}
    if resources_file:
        try:
            text = os.read(0, 1 << 20).decode() if resources_file == "-" else open(resources_file).read()
            resources = fastjson.loads(text)
        except (OSError, ValueError) as e:
            raise Error(f"cannot read resources from {resources_file!r}: {e}") from None
        if not isinstance(resources, dict):
            raise Error(f"{resources_file!r} must hold a linux.resources JSON object")
    for flag, value in (flags or {}).items():
        if value is None:
            continue
        section, key, kind = UPDATE_FLAGS[flag]
        resources.setdefault(section, {})[key] = _convert(flag, value, kind)
    if not resources:
        raise Error("nothing to update: pass --resources FILE or limits such as --memory 256M")
    cgroup.set_resources(resources, update=True)
    _remember_resources(container, resources)


def _remember_resources(container, update):
    """Keep the config copy's linux.resources in step, so later readers see the new limits."""
    from crate_runc import container as lifecycle, state
    config = lifecycle.load_config(container)
    merged = config.setdefault("linux", {}).setdefault("resources", {})
    for section, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section].update(value)
        else:
            merged[section] = value
    with open(os.path.join(container.dir, state.CONFIG_COPY), "w") as f:
        f.write(fastjson.dumps(config))


def events(root, container_id, stats_once, interval, out):
    """runc events: one stats event with --stats, else one every `interval` seconds until the
    container stops (json lines {"type","id","data"})."""
    container, cgroup = _with_cgroup(root, container_id, "watch")
    while True:
        if container.status(cgroup) == "stopped":
            if stats_once:
                raise Error(f"container {container_id!r} is not running")
            return
        out.write(fastjson.dumps({"type": "stats", "id": container_id, "data": cgroup.stats()}) + "\n")
        out.flush()
        if stats_once:
            return
        time.sleep(interval)
