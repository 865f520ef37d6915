"""Container lifecycle: create, start, run, kill, delete, and the state of one container.

The parent side of every command lives here; spawn.py forks the init and init.py is the
container side. Every failure raises Error with one line; a failed create leaves no state
directory, cgroup, mount or process behind.
"""
import os
import time

from crate_runc import Error, SPEC_VERSION, fastjson, log, signals, state
from crate_runc.state import Container

# create and run also need spec, namespaces, spawn (which brings the init side and ctypes) and
# hooks; they are imported where used so that start, state, kill and delete start faster


class Launch:
    """What the container init needs, prepared by the parent before it forks."""

    def __init__(self, container_id, bundle, config, rootfs, plan, cgroup, fifo_fd, console_sock,
                 preserve_fds=0, no_pivot=False, no_new_keyring=False, is_exec=False, state_root=None):
        self.is_exec = is_exec  # an `exec` process joining a running container, not its init
        # the child cannot import from the host's files once it is in the container's mount
        # namespace or past pivot_root: load here what it will need
        if (config.get("process") or {}).get("terminal"):
            from crate_runc import console  # noqa: F401
            import socket  # noqa: F401 - console.send_fd needs it
        self.seccomp_filter = None
        seccomp_config = config.get("linux", {}).get("seccomp")
        if seccomp_config:
            # built here, in the host's namespaces: the child cannot reach libseccomp later
            from crate_runc import seccomp
            cache = os.path.join(state_root, state.SECCOMP_CACHE) if state_root else None
            self.seccomp_filter = seccomp.prepare(seccomp_config, cache)
        self.id = container_id
        self.bundle = bundle
        self.config = config
        self.rootfs = rootfs
        self.plan = plan
        self.cgroup = cgroup
        self.fifo_fd = fifo_fd
        self.console_sock = console_sock
        self.preserve_fds = preserve_fds
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring

    def hook_state(self, status, pid):
        return {"ociVersion": SPEC_VERSION, "id": self.id, "status": status, "pid": pid,
                "bundle": self.bundle, "annotations": self.config.get("annotations", {})}


def resolve_rootless(value):
    if value in (None, "auto"):
        return os.geteuid() != 0
    if value in ("true", "false"):
        return value == "true"
    raise Error(f"invalid --rootless value {value!r}: use true, false or auto")


def _cgroups():
    from crate_runc import cgroups
    return cgroups


def cgroup_of(container):
    saved = container.data.get("cgroup")
    return _cgroups().Manager.from_state(saved) if saved else None


def _rootfs_of(config, bundle):
    rootfs = config["root"]["path"]
    rootfs = os.path.normpath(os.path.join(bundle, rootfs))
    if not os.path.isdir(rootfs):
        raise Error(f"root.path {config['root']['path']!r} is not a directory ({rootfs}); "
                    "put the container's root filesystem there")
    return rootfs


def write_pid_file(path, pid):
    """The host pid as decimal with no newline, written atomically (runc's format)."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def create(root, container_id, bundle, pid_file=None, console_socket=None, console_sock=None,
           preserve_fds=0, no_pivot=False, no_new_keyring=False, rootless=None, config=None):
    """Create a container whose init waits on exec.fifo -> the Container."""
    from crate_runc import hooks, namespaces, spawn, spec
    state.check_id(container_id)
    bundle = os.path.abspath(bundle or ".")
    config = config or spec.load(bundle)
    rootfs = _rootfs_of(config, bundle)
    rootless = resolve_rootless(rootless)
    plan = namespaces.Plan(config, rootless)
    if no_pivot and config.get("linux", {}).get("rootfsPropagation") in ("private", "rprivate"):
        raise Error("rootfsPropagation [r]private is not safe without pivot_root: drop --no-pivot or "
                    "choose another propagation")
    terminal = (config.get("process") or {}).get("terminal", False)
    if console_socket and not terminal:
        log.debug("--console-socket given for a process without a terminal: ignored")
    container = Container.new(root, container_id)
    cgroup = fifo_fd = None
    try:
        linux_cfg = config.get("linux", {})
        cgroup = _cgroups().manager_for(linux_cfg, container_id, rootless)
        if cgroup is not None:
            cgroup.create()
            cgroup.set_resources(linux_cfg.get("resources", {}))
        os.mkfifo(container.fifo, 0o622)
        os.chmod(container.fifo, 0o622)  # not the umask's: a non-root container user opens it
        if os.geteuid() == 0:
            # the container's root (maybe an unprivileged host uid in a user namespace) opens it
            os.chown(container.fifo, plan.host_id(0, plan.uid_mappings) or 0,
                     plan.host_id(0, plan.gid_mappings) or 0)
        fifo_fd = os.open(container.fifo, os.O_PATH | os.O_CLOEXEC)
        if console_socket and terminal:
            from crate_runc import console
            console_sock = console.connect(console_socket)
        launch = Launch(container_id, bundle, config, rootfs, plan, cgroup, fifo_fd, console_sock,
                        preserve_fds, no_pivot, no_new_keyring, state_root=root)

        def prestart_hooks(pid):
            hook_state = launch.hook_state("creating", pid)
            hooks.run(config, "prestart", hook_state)
            hooks.run(config, "createRuntime", hook_state)

        def seccomp_listener(pid, fd):
            from crate_runc import seccomp
            seccomp.send_to_listener(config["linux"]["seccomp"], fd, pid, launch.hook_state("creating", pid))

        init_pid = spawn.start_init(launch, prestart_hooks, seccomp_listener)
        container.data = {
            "id": container_id, "pid": init_pid, "start_time": state.process_start_time(init_pid),
            "bundle": bundle, "rootfs": rootfs, "created": log.timestamp(),
            "owner": "" if os.geteuid() == 0 else str(os.geteuid()),
            "annotations": config.get("annotations", {}), "rootless": rootless,
            "cgroup": cgroup.to_state() if cgroup is not None else None,
            "pid_namespace": plan.has("pid"),
        }
        spec.save_copy(config, os.path.join(container.dir, state.CONFIG_COPY))
        container.save()
        if pid_file:
            write_pid_file(pid_file, init_pid)
    except BaseException:
        if cgroup is not None:
            try:
                cgroup.destroy()
            except Exception as e:  # the create error is the one to report
                log.warning(f"removing the cgroup of {container_id}: {e}")
        container.remove()
        raise
    finally:
        if fifo_fd is not None:
            os.close(fifo_fd)
        if console_sock is not None:
            console_sock.close()
    return container


def load_config(container):
    try:
        return fastjson.load_file(os.path.join(container.dir, state.CONFIG_COPY))
    except (OSError, ValueError):
        return {}


def start(root, container_id):
    container = Container.load(root, container_id)
    with container:
        status = container.status(cgroup_of(container))
        if status == "stopped":
            raise Error(f"cannot start container {container_id!r}: it has stopped; delete it and create it again")
        if status != "created":
            raise Error(f"cannot start container {container_id!r}: it is already {status}")
        config = load_config(container)
        if not config.get("process"):
            raise Error(f"cannot start container {container_id!r}: its config.json has no process; "
                        "delete it and create it from a config with a process")
        release(container)
    run_hooks_warning_only(config, "poststart", container, "running")
    return container


def run_hooks_warning_only(config, phase, container, status):
    """poststart and poststop: the runtime-spec makes a failing hook a warning, not an error."""
    if not config.get("hooks", {}).get(phase):
        return
    from crate_runc import hooks
    hook_state = {"ociVersion": SPEC_VERSION, "id": container.id, "status": status, "pid": container.pid,
                  "bundle": container.data.get("bundle", ""), "annotations": config.get("annotations", {})}
    for index, hook in enumerate(config["hooks"][phase]):
        try:
            hooks.run_one(hook, fastjson.dumps(hook_state), phase, index)
        except Error as e:
            log.warning(str(e))


def release(container):
    """Let the init exec: it blocks opening exec.fifo for writing until we open it for reading,
    writes one byte, and holds the fifo open until its execve closes it. Non-blocking reads with
    a liveness check, so a dead init cannot hang us."""
    import select
    fd = os.open(container.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while not select.select([fd], [], [], 0.05)[0]:
            if not container.init_alive():
                raise Error(f"container {container.id!r}: its init exited before it could start")
        if os.read(fd, 1) != b"0":
            raise Error(f"container {container.id!r}: its init exited before it could start")
        os.unlink(container.fifo)
        while True:
            if select.select([fd], [], [], 0.05)[0]:
                if not os.read(fd, 1):
                    break  # EOF: the init's execve closed its end
            elif not container.init_alive():
                break  # died after the handshake (e.g. a failing startContainer hook)
    finally:
        os.close(fd)


def oci_state(root, container_id):
    container = Container.load(root, container_id)
    return container.oci_state(container.status(cgroup_of(container)))


def kill(root, container_id, signal_number, all_processes=False):
    container = Container.load(root, container_id)
    cgroup = cgroup_of(container)
    status = container.status(cgroup)
    if status == "stopped" and not all_processes:
        raise Error(f"cannot kill container {container_id!r}: container not running")
    if all_processes and cgroup is not None:
        # freeze while signalling so nothing forks past us (runc's way); stay paused if we were,
        # unless the signal is SIGKILL, which frozen tasks only act on once thawed
        cgroup.freeze()
        try:
            _signal_each(cgroup.pids(), signal_number)
        finally:
            if status != "paused" or signal_number == signals.SIGKILL:
                cgroup.thaw()
        return
    if status != "stopped":
        _signal_each([container.pid], signal_number)
    if status == "paused" and signal_number == signals.SIGKILL:
        cgroup.thaw()


def _signal_each(pids, signal_number):
    for pid in pids:
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            pass


def wait_gone(container, timeout=10.0):
    deadline = time.monotonic() + timeout
    while container.init_alive():
        if time.monotonic() > deadline:
            raise Error(f"container {container.id!r}: pid {container.pid} did not die after SIGKILL")
        time.sleep(0.005)


def delete(root, container_id, force=False):
    try:
        container = Container.load(root, container_id)
    except Error:
        leftover = os.path.join(root, container_id)
        if force and os.path.isdir(leftover):
            import shutil  # an aborted create may leave a directory without state.json
            shutil.rmtree(leftover, ignore_errors=True)
        if force:
            return
        raise
    with container:
        cgroup = cgroup_of(container)
        status = container.status(cgroup)
        if status in ("running", "paused") and not force:
            raise Error(f"cannot delete container {container_id!r} that is not stopped: {status}; "
                        "stop it first or use --force")
        if status != "stopped":
            kill(root, container_id, signals.SIGKILL, all_processes=True)
            wait_gone(container)
        destroy(container, cgroup)


def destroy(container, cgroup):
    """Remove a stopped container: leftover processes, cgroup, poststop hooks, state directory."""
    if cgroup is not None:
        if not container.data.get("pid_namespace"):
            # without its own pid namespace nothing killed the init's children with it
            _signal_each(cgroup.pids(), signals.SIGKILL)
        cgroup.destroy()
    run_hooks_warning_only(load_config(container), "poststop", container, "stopped")
    container.remove()


def list_states(root):
    out = []
    for container_id in state.list_ids(root):
        try:
            container = Container.load(root, container_id)
            out.append(container.oci_state(container.status(cgroup_of(container))))
        except Error:
            continue  # removed while we looked
    return out


def run(root, container_id, bundle, pid_file=None, console_socket=None, detach=False, keep=False,
        preserve_fds=0, no_pivot=False, no_new_keyring=False, rootless=None):
    """create + start; in the foreground also forward signals, relay a tty, wait, delete, and
    return the container's exit status (128+N when killed by signal N)."""
    from crate_runc import foreground, spec
    state.check_id(container_id)
    config = spec.load(bundle or ".")
    terminal = (config.get("process") or {}).get("terminal", False)
    console_end, init_end = foreground.console_pair(terminal, console_socket, detach)
    container = create(root, container_id, bundle, pid_file, console_socket, init_end, preserve_fds,
                       no_pivot, no_new_keyring, rootless, config)
    if not detach:
        foreground.forward_signals(container.pid, except_winch=console_end is not None)
    try:
        start(root, container_id)
    except BaseException:
        delete(root, container_id, force=True)
        raise
    if detach:
        return 0
    status = foreground.wait(container.pid, console_end)
    if not keep:
        delete(root, container_id, force=True)
    return status
