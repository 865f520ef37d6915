"""`exec`: run another process in a created, running (or, when asked, paused) container.

The process joins every namespace of the container's init and its cgroups, then gets the
container's treatment: console, no_new_privs, seccomp, rlimits, capabilities, user, cwd. Its
description is a runtime-spec process object (--process FILE, as containerd and conmon send), or
is built from the container's own process and the command-line options, as runc does.
"""
from crate_runc import Error, spec
from crate_runc.state import Container


def process_from_file(path):
    try:
        process = spec.fastjson.load_file(path)
    except FileNotFoundError:
        raise Error(f"process file {path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise Error(f"cannot read process file {path!r}: {e}") from None
    try:
        spec.check(process, spec.SPEC["process"], ("process",))
        spec.check_semantics({"process": process, "root": {"path": "/"}})
    except spec.ConfigError as e:
        raise Error(f"invalid process file {path!r}: {e}") from None
    return process


def process_from_options(base, args, env=(), cwd=None, user=None, additional_gids=(), tty=False,
                         caps=(), no_new_privs=False):
    """The container's process with runc exec's command-line overrides."""
    if not args:
        raise Error("exec needs a command to run, or --process FILE")
    process = dict(base or {"cwd": "/"})
    process["args"] = list(args)
    process["env"] = list(process.get("env", [])) + list(env)
    process["terminal"] = bool(tty)
    process.pop("consoleSize", None)
    if cwd:
        process["cwd"] = cwd
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise Error(f"invalid --user {user!r}: give UID or UID:GID as numbers")
        process["user"] = dict(process.get("user", {}), uid=int(uid), gid=int(gid or 0))
    if additional_gids:
        if not all(g.isdigit() for g in additional_gids):
            raise Error("invalid --additional-gids: give numbers")
        process["user"] = dict(process.get("user", {}), additionalGids=[int(g) for g in additional_gids])
    if caps:
        current = dict(process.get("capabilities") or {})
        for name in ("bounding", "effective", "permitted", "ambient"):
            current[name] = sorted(set(current.get(name, [])) | set(caps))
        process["capabilities"] = current
    if no_new_privs:
        process["noNewPrivileges"] = True
    spec.check_semantics({"process": process, "root": {"path": "/"}})
    return process


def exec_process(root, container_id, process, detach=False, pid_file=None, console_socket=None,
                 preserve_fds=0, ignore_paused=False):
    """Start `process` in the container -> 0 when detached, else its exit status."""
    from crate_runc import container as lifecycle, foreground, namespaces, spawn
    container = Container.load(root, container_id)
    cgroup = lifecycle.cgroup_of(container)
    status = container.status(cgroup)
    if status == "stopped":
        raise Error(f"cannot exec in container {container_id!r}: it has stopped")
    if status == "paused" and not ignore_paused:
        raise Error(f"cannot exec in container {container_id!r}: it is paused; resume it or pass --ignore-paused")
    config = dict(lifecycle.load_config(container), process=process)
    config.pop("hooks", None)  # hooks belong to the container's lifecycle, not to exec
    plan = namespaces.Plan(config, container.data.get("rootless")).joining(container.pid)
    console_end, process_end = foreground.console_pair(process.get("terminal"), console_socket, detach)
    console_sock = process_end
    if console_socket and process.get("terminal"):
        from crate_runc import console
        console_sock = console.connect(console_socket)
    try:
        launch = lifecycle.Launch(container_id, container.data.get("bundle", ""), config,
                                  container.data.get("rootfs", ""), plan, cgroup, None, console_sock,
                                  preserve_fds, is_exec=True, state_root=root)

        def seccomp_listener(pid, fd):
            from crate_runc import seccomp
            seccomp.send_to_listener(config["linux"]["seccomp"], fd, pid, launch.hook_state("running", pid))

        pid = spawn.start_init(launch, None, seccomp_listener)
    finally:
        if console_sock is not None:
            console_sock.close()
    if pid_file:
        lifecycle.write_pid_file(pid_file, pid)
    if detach:
        return 0
    foreground.forward_signals(pid, except_winch=console_end is not None)
    return foreground.wait(pid, console_end)
