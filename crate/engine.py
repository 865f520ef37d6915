"""What the commands do, over the store (containers), crate_image.api and the runtime adapter.

Every operation leaves either a whole container or nothing: a failed or interrupted `create`
removes the bundle and record it made; a failed start leaves no runtime state or process.
States: creating -> created -> starting -> running -> exited (-> starting again: `crate start`),
and removing at the end. A record whose monitor died is repaired by refresh() when next read.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

from crate import containers as store_module
from crate import runtime as runtime_module
from crate.containers import alive, now, proc_start_time
from crate.errors import Error
from crate.monitor import Attach, Monitor

STOP_SIGNAL = "org.opencontainers.image.stopSignal"
ACTIVE = ("starting", "running")


# ------------------------------------------------------------------ images
def progress_reporter(quiet=False):
    from crate_image.progress import for_terminal
    return for_terminal(quiet=quiet)


def pull(reference, root, quiet=False):
    from crate_image import api
    return api.pull(reference, root=root, progress=progress_reporter(quiet))


def ensure_image(reference, root, quiet=False):
    """The stored image for `reference`, pulled first when the store lacks it (as docker run)."""
    from crate_image import api
    from crate_image.errors import NotFound
    try:
        return api.image(reference, root=root, extract=False)
    except NotFound:
        pass
    if not quiet:
        sys.stderr.write(f"Unable to find image '{reference}' locally\n")
        sys.stderr.flush()
    return pull(reference, root, quiet)


def image_users(store, image):
    """Containers made from `image` (an api.Image)."""
    return [c for c in store.all() if c.data.get("image_digest") == image.digest
            or c.data.get("image_id") == image.config_digest]


def remove_image(store, reference, force=False):
    """Untag `reference` (refused while a container uses it, unless force), then free what no
    image or bundle needs any more. -> the name removed."""
    from crate_image import api
    image = api.image(reference, root=store.root, extract=False)
    other_names = [r for r in api.images(root=store.root) if r["id"] == image.config_digest and r["name"] != image.name]
    users = image_users(store, image)
    if users and not force and not other_names:  # untagging one of several names loses nothing
        raise Error(f"image {reference} is used by container {users[0].short()} ({users[0].name})",
                    f"remove the container first (crate rm {users[0].name}) or use rmi -f")
    name = api.remove(reference, root=store.root)
    api.prune(root=store.root)  # bundles keep the layers they use: running containers lose nothing
    return name


# ------------------------------------------------------------------ create
def expand_env(items):
    """-e KEY=VALUE as given; -e KEY takes KEY's value from crate's environment (or is dropped)."""
    out = []
    for item in items or []:
        if "=" in item:
            if not item.split("=", 1)[0]:
                raise Error(f"invalid environment variable {item!r}", "use -e KEY=VALUE")
            out.append(item)
        elif item in os.environ:
            out.append(f"{item}={os.environ[item]}")
    return out


def create(store, reference, *, name=None, command=None, entrypoint=None, env=(), workdir=None, user=None,
           hostname=None, network="host", tty=False, stdin=False, auto_remove=False, runtime=None, quiet=False):
    """Pull (if needed), reserve a name and id, make the bundle -> the Container ("created")."""
    from crate_image import api
    if network not in ("host", "none"):
        raise Error(f"unknown network {network!r}", "use --network host or --network none (no bridge networks yet)")
    if workdir is not None and not workdir.startswith("/"):
        raise Error(f"the working directory {workdir!r} is not absolute", "give a path starting with /")
    runtime_path = runtime_module.find(runtime)
    env = expand_env(env)
    if name is not None:
        store.check_name(name)  # before a pull; checked again when the name is taken
    image = ensure_image(reference, store.root, quiet)
    container = store.ensure().reserve(name, {
        "image": reference, "image_name": image.name, "image_id": image.config_digest,
        "auto_remove": bool(auto_remove),
        "runtime": {"path": runtime_path, "root": runtime_module.default_root(runtime_path)},
        "store_root": store.root,
        "state": {"status": "creating", "creator_pid": os.getpid(), "creator_start": proc_start_time(os.getpid())},
    })
    try:
        bundle = api.make_bundle(image.name, container.bundle, root=store.root, args=command or None,
                                 entrypoint=entrypoint, env=env or None, user=user, workdir=workdir,
                                 hostname=hostname or container.id[:12], terminal=tty,
                                 network_namespace=(network == "none"))
        process = bundle.config["process"]
        annotations = bundle.config.get("annotations") or {}
        with container.update():
            container.data.update(
                image_digest=bundle.image, bundle=bundle.path, rootfs_mode=bundle.mode, rootless=bundle.rootless,
                log_path=container.log_path,
                config={"args": process["args"], "env": process["env"], "cwd": process["cwd"],
                        "user": f"{process['user']['uid']}:{process['user']['gid']}", "user_spec": user,
                        "cmd": command or None, "entrypoint": entrypoint, "tty": bool(tty), "stdin": bool(stdin),
                        "hostname": bundle.config.get("hostname"), "network": network,
                        "stop_signal": annotations.get(STOP_SIGNAL) or "SIGTERM"})
            container.state.update(status="created")
            container.state.pop("creator_pid", None)
            container.state.pop("creator_start", None)
    except BaseException:
        with contextlib.suppress(Exception):
            destroy(container)
        raise
    return container


# ------------------------------------------------------------------ state repair
def refresh(container):
    """Bring a record in line with the world when the process that owned it died (a monitor
    killed, a create interrupted by SIGKILL, a reboot). Returns the container."""
    st = container.state
    status = st.get("status")
    if status == "creating" and not alive(st.get("creator_pid"), st.get("creator_start")):
        with contextlib.suppress(Error), container.update():
            if container.status == "creating":
                container.state.update(status="dead", error="its creation was interrupted")
    if status not in ACTIVE or alive(st.get("monitor_pid"), st.get("monitor_start")):
        return container
    with contextlib.suppress(Error), container.update():
        st = container.state
        if st.get("status") not in ACTIVE or alive(st.get("monitor_pid"), st.get("monitor_start")):
            return container
        if st.get("status") == "running" and alive(st.get("pid"), st.get("pid_start")):
            return container  # still runs without its monitor: stop/kill/rm still work
        with contextlib.suppress(Error):
            runtime_of(container).delete(container.id, force=True)
            st["runtime_state"] = False
        if st.get("status") == "running":
            st.update(status="exited", exit_code=None, finished_at=now(), pid=0, pid_start=None,
                      error="its monitor died: the exit status is unknown")
        else:  # "starting": back to what it was
            st.update(status=st.get("previous") or "created", monitor_pid=0,
                      error="its monitor died before the container started")
    return container


def runtime_of(container):
    rt = container.data["runtime"]
    return runtime_module.Runtime(rt["path"], rt["root"], log=container.runtime_log)


def is_running(container):
    return refresh(container).status in ACTIVE


# ------------------------------------------------------------------ start and run
def _startable(container):
    """Under the lock: False when it already runs; an Error when it cannot start."""
    container.reload()
    refresh(container)
    status = container.status
    if status in ACTIVE:
        return False
    if status not in ("created", "exited"):
        raise Error(f"container {container.name} cannot start: it is {status}",
                    f"remove it (crate rm -f {container.name})")
    if container.data.get("rootfs_mode") == "overlay":
        from crate_image import bundle as bundles
        if not bundles.is_mountpoint(os.path.join(container.bundle, "rootfs")):
            raise Error(f"the root filesystem of {container.name} is no longer mounted (the host restarted?)",
                        f"remove it (crate rm {container.name}) and run the image again")
    return True


def _claim_start(container, monitor_pid):
    """Under the lock, after _startable: it becomes "starting", with its monitor."""
    container.state.update(status="starting", previous=container.status, monitor_pid=monitor_pid,
                           monitor_start=proc_start_time(monitor_pid), error="", runtime_state=True)
    container.save()


def _start_failed(container, error):
    with contextlib.suppress(Error), container.update():
        if container.status == "starting":
            container.state.update(status=container.state.get("previous") or "created", monitor_pid=0,
                                   error=str(error))


def start(container):
    """Start a created or exited container in the background, under its own monitor process.
    Returns False when it was already running."""
    with container.lock():
        # checked before the monitor exists, so that a refused start leaves no process
        if not _startable(container):
            return False
        read_end, write_end = os.pipe()
        monitor_log = open(container.monitor_log, "ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "crate.monitor", container.store.root, container.id, str(write_end)],
                stdin=subprocess.DEVNULL, stdout=monitor_log, stderr=monitor_log, pass_fds=(write_end,),
                start_new_session=True, cwd="/")
        finally:
            monitor_log.close()
            os.close(write_end)
        try:
            _claim_start(container, process.pid)
        except BaseException:
            process.terminate()
            process.wait()
            os.close(read_end)
            raise
    try:
        answer = _read_answer(read_end, process)
    except BaseException as e:
        _start_failed(container, e)
        raise
    if not answer.get("ok"):
        error = Error(answer.get("problem") or "the monitor failed", answer.get("fix"), answer.get("status") or 125)
        _start_failed(container, error)
        raise error
    return True


def _read_answer(fd, process):
    """The monitor's one-line report, waiting through a Ctrl-C (which stops the start instead)."""
    import json
    data = b""
    interrupted = False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except KeyboardInterrupt:
            interrupted = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # it undoes the start and reports
            continue
        if not chunk:
            break
        data += chunk
    os.close(fd)
    if interrupted:
        raise KeyboardInterrupt
    try:
        return json.loads(data.decode().strip().splitlines()[0])
    except (ValueError, IndexError):
        return {"ok": False, "problem": "the monitor exited without starting the container",
                "fix": "see monitor.log in the container's directory", "status": 125}


def run_attached(container, discard_on_failure=False):
    """Start the container with this process as its monitor, attached to our stdio -> its exit
    status (docker run without -d). When it cannot start, it is removed if discard_on_failure
    (crate run made it), else it stays as it was."""
    cfg = container.data.get("config", {})
    monitor = Monitor(container, attach=Attach(stdin=0 if cfg.get("stdin") else None))
    try:
        if cfg.get("tty") and cfg.get("stdin") and not os.isatty(0):
            raise Error("the input device is not a TTY", "drop -t, or run crate from a terminal")
        with container.lock():
            if not _startable(container):
                raise Error(f"container {container.name} is already running", "use crate exec or crate logs")
            _claim_start(container, os.getpid())
        monitor.launch()
    except BaseException as e:
        if discard_on_failure:
            destroy(container)
        else:
            _start_failed(container, e)
        raise
    return monitor.wait()


# ------------------------------------------------------------------ stop, kill
def parse_signal(text):
    """'TERM', 'SIGTERM', 'term' or '15' -> the number."""
    value = str(text).strip().upper()
    try:
        number = int(value) if value.isdigit() else signal.Signals[value if value.startswith("SIG") else "SIG" + value]
    except KeyError:
        raise Error(f"invalid signal {text!r}", "use a name such as TERM or KILL, or a number") from None
    if not 0 < int(number) < signal.NSIG:
        raise Error(f"invalid signal {text!r}", f"signal numbers go from 1 to {signal.NSIG - 1}")
    return int(number)


def wait_exit(container, timeout):
    """Wait until the container is no longer running (or removed) -> True, False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            container.reload()
        except Error:
            return True  # removed (--rm)
        if not is_running(container):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _signal(container, number):
    """Signal the init through the runtime; False when it was no longer running."""
    try:
        runtime_of(container).kill(container.id, number)
        return True
    except runtime_module.RuntimeFailed:
        state = runtime_of(container).state(container.id)
        if state is None or state.get("status") == "stopped":
            return False  # it ended meanwhile
        raise


def stop(container, timeout=None):
    """The image's StopSignal (SIGTERM by default), then SIGKILL after `timeout` seconds."""
    if not is_running(container):
        return
    deadline = time.monotonic() + 30
    while container.status == "starting" and time.monotonic() < deadline:
        time.sleep(0.02)  # its monitor is creating it: signal it once it runs
        with contextlib.suppress(Error):
            refresh(container.reload())
    timeout = 10 if timeout is None else timeout
    number = parse_signal(container.data.get("config", {}).get("stop_signal") or "SIGTERM")
    if timeout > 0 and _signal(container, number) and wait_exit(container, timeout):
        return
    _signal(container, signal.SIGKILL)
    if not wait_exit(container, 30):
        raise Error(f"container {container.name} did not exit 30 s after SIGKILL",
                    "look for a process stuck in the kernel (D state)")


def kill(container, text="KILL"):
    number = parse_signal(text)
    if not is_running(container):
        raise Error(f"container {container.name} is not running", f"start it first (crate start {container.name})")
    if not _signal(container, number):
        raise Error(f"container {container.name} is not running", f"start it first (crate start {container.name})")


# ------------------------------------------------------------------ remove
def remove(container, force=False):
    refresh(container)
    if container.status in ACTIVE:
        if not force:
            raise Error(f"container {container.name} is running",
                        f"stop it first (crate stop {container.name}) or use crate rm -f")
        deadline = time.monotonic() + 30
        while True:  # again and again: one still "starting" cannot be signalled until it runs
            with contextlib.suppress(Error):
                _signal(container, signal.SIGKILL)
            if wait_exit(container, 0.5):
                break
            if time.monotonic() > deadline:
                raise Error(f"container {container.name} did not exit after SIGKILL", "try again")
    elif container.status == "creating" and not force:
        raise Error(f"container {container.name} is being created", "wait for it, or use crate rm -f")
    destroy(container)


def destroy(container):
    """Remove the runtime's state, the bundle (unmounted), the logs and the record."""
    from crate_image import api
    from crate_image.errors import ImageError
    lock = container.lock()
    try:
        lock.__enter__()
    except Error:
        return  # already gone
    try:
        with contextlib.suppress(Error):
            container.reload()
            container.state["status"] = "removing"
            container.save()
        if container.data.get("runtime") and container.state.get("runtime_state"):
            with contextlib.suppress(Error):  # the monitor did it at exit, unless it failed there
                runtime_of(container).delete(container.id, force=True)
        if os.path.isdir(container.bundle):
            try:
                api.remove_bundle(container.bundle, root=container.store.root)
            except ImageError as e:
                if os.path.exists(os.path.join(container.bundle, "config.json")) or \
                        os.path.isdir(os.path.join(container.bundle, "rootfs")):
                    raise Error(f"cannot remove the bundle of {container.short()}: {e.problem}", e.fix) from None
        store_module.remove_dir(container.dir)
    finally:
        lock.__exit__(None, None, None)


# ------------------------------------------------------------------ inspect
def inspect(container):
    """docker inspect's shape, for what crate knows."""
    refresh(container)
    d, st, cfg = container.data, container.state, container.data.get("config", {})
    status = container.status
    args = cfg.get("args") or []
    return {
        "Id": container.id,
        "Name": container.name,
        "Created": d.get("created"),
        "Path": args[0] if args else None,
        "Args": args[1:],
        "State": {
            "Status": status, "Running": status == "running", "Pid": st.get("pid") or 0,
            "ExitCode": st.get("exit_code"), "Error": st.get("error") or "",
            "StartedAt": st.get("started_at"), "FinishedAt": st.get("finished_at"),
            "MonitorPid": st.get("monitor_pid") or 0,
        },
        "Image": d.get("image_id"),
        "ImageName": d.get("image_name"),
        "ImageDigest": d.get("image_digest"),
        "Config": {
            "Image": d.get("image"), "Hostname": cfg.get("hostname"), "User": cfg.get("user_spec") or "",
            "Env": cfg.get("env"), "Cmd": cfg.get("cmd"), "Entrypoint": cfg.get("entrypoint"),
            "WorkingDir": cfg.get("cwd"), "Tty": cfg.get("tty"), "OpenStdin": cfg.get("stdin"),
            "StopSignal": cfg.get("stop_signal"),
        },
        "HostConfig": {
            "AutoRemove": d.get("auto_remove"), "NetworkMode": cfg.get("network"),
            "Runtime": (d.get("runtime") or {}).get("path"),
        },
        "RuntimeRoot": (d.get("runtime") or {}).get("root"),
        "BundlePath": d.get("bundle"),
        "Rootfs": {"Mode": d.get("rootfs_mode"), "Rootless": d.get("rootless")},
        "LogPath": d.get("log_path"),
        "RuntimeLogPath": container.runtime_log,
    }
