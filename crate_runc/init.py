"""The container's init process, from its first moment in the new namespaces to execve.

Order (runc's): session and keyring, rootfs (mounts, devices), prestart/createRuntime hooks in the
parent, createContainer hooks, pivot_root, masked/read-only paths, console, hostname, sysctl,
loopback, oom score, no_new_privs, rlimits, capabilities and user, cwd, the executable's lookup;
then tell the parent we are ready and block on exec.fifo until `start`; startContainer hooks,
seccomp as late as possible, execve. Everything this needs from the host (Python modules,
libseccomp) is loaded before pivot_root, when the host's files are still reachable.
"""
import os
import resource  # imported here: after pivot_root the host's Python modules are out of reach

import _signal

from crate_runc import Error, capabilities, hooks, linux, log, mounts

# Python ignores these at start-up, and ignored signals stay ignored across execve
IGNORED_BY_PYTHON = (13, 25)  # SIGPIPE, SIGXFSZ
# a pid namespace's init only receives signals it handles: until execve, exit on the usual ones
# so that `kill` works on a created container as it does with runc
EXIT_SIGNALS = (1, 2, 3, 10, 12, 15)  # HUP INT QUIT USR1 USR2 TERM
RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
# sysctls a container may set only with its own namespace of this kind (runc's validation)
SYSCTL_NAMESPACES = (("kernel.msg", "ipc"), ("kernel.sem", "ipc"), ("kernel.shm", "ipc"),
                     ("fs.mqueue.", "ipc"), ("net.", "network"), ("kernel.hostname", "uts"),
                     ("kernel.domainname", "uts"))


def _exit_on_signal(number, frame):
    os._exit(128 + number)


def run(launch, sync, setup_function=None):
    """Never returns: execs the container process (or, with setup_function=setup_exec, an exec'd
    one) or exits non-zero after reporting to `sync`."""
    try:
        path, argv, env = (setup_function or setup)(launch, sync)
    except BaseException as e:  # noqa: B902 - every failure must reach the parent as one line
        if not sync.send_error(e):  # after `ready` the parent is gone: the container's stderr
            os.write(2, f"crate-runc: {e}\n".encode(errors="replace"))
        os._exit(1)
    for number in IGNORED_BY_PYTHON + EXIT_SIGNALS:
        _signal.signal(number, _signal.SIG_DFL)
    try:
        os.execve(path, argv, env)
    except OSError as e:
        os.write(2, f"crate-runc: exec {argv[0]}: {e.strerror}\n".encode())
        os._exit(127 if e.errno == 2 else 126)


def setup(launch, sync):
    config = launch.config
    process = config.get("process") or {}
    plan = launch.plan
    in_userns = plan.has("user")
    begin(launch)
    if not launch.no_new_keyring:
        try:
            linux.join_session_keyring(launch.id)
        except OSError:
            pass  # no keyrings (rootless quota, or disabled): runc carries on too
    # -- before pivot_root: what needs the host's files is loaded already (the parent prepared
    # the seccomp filter; modules are imported); exec.fifo is reopened through our fd directory
    # in the host's /proc, kept open across the pivot, as the container may have no /proc (when
    # joined namespaces hide ours: the container's /proc after the pivot, as runc does)
    try:
        fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        fd_dir = None
    if plan.has("mount"):
        builder = mounts.RootfsBuilder(config, launch.rootfs, launch.bundle, in_userns, plan.has("cgroup"))
        builder.prepare()
    hook_config = config.get("hooks", {})
    if hook_config.get("prestart") or hook_config.get("createRuntime"):
        sync.send("hooks")
        sync.wait(b"h")
    if hook_config.get("createContainer"):
        os.chdir(launch.rootfs)
        hooks.run(config, "createContainer", launch.hook_state("creating", os.getpid()))
    mounts.pivot(launch.rootfs, plan.has("mount"), launch.no_pivot)
    if plan.has("mount"):
        mounts.finalize(config, in_userns)
    # -- inside the new root
    start_console(process, launch, mount_on_dev_console=plan.has("mount"))
    set_names(config, plan)
    set_sysctls(config, plan)
    if plan.is_new("network"):
        linux.link_up("lo")
    if "oomScoreAdj" in process:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(process["oomScoreAdj"]))
    if not process:  # created without a process (allowed): hold the namespaces until deleted
        sync.send("ready")
        sync.close()
        wait_for_start(launch.fifo_fd, fd_dir)
        os._exit(0)
    path, env, late_filter = prepare_process(process, plan, launch, sync)
    sync.send("ready")
    sync.close()
    wait_for_start(launch.fifo_fd, fd_dir)
    if hook_config.get("startContainer"):
        hooks.run(config, "startContainer", launch.hook_state("created", os.getpid()))
    if late_filter is not None:
        late_filter.load()  # as late as possible: the filter then governs only the container process
    return path, process["args"], env


def setup_exec(launch, sync):
    """An `exec` process, already in the container's namespaces and cgroups (and root)."""
    process = launch.config["process"]
    begin(launch)
    start_console(process, launch, mount_on_dev_console=False)
    path, env, late_filter = prepare_process(process, launch.plan, launch, sync)
    sync.send("ready")
    sync.close()
    if late_filter is not None:
        late_filter.load()
    return path, process["args"], env


def begin(launch):
    for number in EXIT_SIGNALS:
        _signal.signal(number, _exit_on_signal)
    # fds the caller left open must not reach the container (only 0-2 and --preserve-fds); ours
    # are all close-on-exec already. Done first: a seccomp filter may later forbid close_range
    linux.cloexec_from(3 + launch.preserve_fds)
    os.setsid()


def start_console(process, launch, mount_on_dev_console):
    """With process.terminal: a pty from this /dev/pts, its master sent over the console socket,
    its slave our stdio and controlling terminal (and bind-mounted on /dev/console for the init)."""
    if not process.get("terminal"):
        return
    from crate_runc import console  # imported by the parent already (see Launch)
    if launch.console_sock is None:
        raise Error("process.terminal is true but there is no console socket to send the pty to; "
                    "pass --console-socket or set process.terminal to false")
    master, slave_path = console.open_pty()
    size = process.get("consoleSize")
    if size and size.get("height") and size.get("width"):
        console.set_size(master, size["height"], size["width"])
    if mount_on_dev_console and os.path.isdir("/dev"):
        if not os.path.lexists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        linux.mount(slave_path, "/dev/console", None, linux.MS_BIND)
    console.send_fd(launch.console_sock, master)
    os.close(master)
    launch.console_sock.close()
    console.become_terminal(slave_path)


def prepare_process(process, plan, launch, sync):
    """no_new_privs, seccomp (now, or returned to load just before execve), rlimits, identity
    and the executable -> (path, environment, filter still to load or None)."""
    seccomp_filter = launch.seccomp_filter
    if process.get("noNewPrivileges"):
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp_filter is not None and (not process.get("noNewPrivileges") or seccomp_filter.notify):
        # without no_new_privs loading needs CAP_SYS_ADMIN, so before dropping it; a filter with a
        # notify listener is loaded while the parent is still here to hand its fd to the agent
        load_seccomp(seccomp_filter, sync)
        seccomp_filter = None
    set_rlimits(process.get("rlimits", []))
    env = environment(process.get("env", []))
    set_identity(process, plan, launch, env)
    path = find_executable(process["args"][0], env.get("PATH", ""))
    return path, env, seccomp_filter


def load_seccomp(seccomp_filter, sync):
    listener = seccomp_filter.load()
    if listener is not None:
        sync.send(f"seccomp {listener}")  # the parent copies the fd with pidfd_getfd
        sync.wait(b"s")
        os.close(listener)


def set_names(config, plan):
    for key, setter in (("hostname", linux.sethostname), ("domainname", linux.setdomainname)):
        if key in config:
            if not plan.has("uts"):
                raise Error(f"cannot set {key} without a UTS namespace; add {{\"type\": \"uts\"}} to "
                            "linux.namespaces")
            setter(config[key])


def set_sysctls(config, plan):
    for key, value in config.get("linux", {}).get("sysctl", {}).items():
        for prefix, namespace in SYSCTL_NAMESPACES:
            if key.startswith(prefix) and not plan.has(namespace):
                raise Error(f"sysctl {key!r} needs a {namespace} namespace of the container's own")
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise Error(f"cannot set sysctl {key}={value}: {e.strerror}") from None


def set_rlimits(rlimits):
    for limit in rlimits:
        number = RLIMITS.get(limit["type"])
        if number is None:
            raise Error(f"unknown rlimit type {limit['type']!r}")
        try:
            resource.setrlimit(number, (limit["soft"], limit["hard"]))
        except (OSError, ValueError) as e:
            raise Error(f"cannot set {limit['type']} to soft {limit['soft']} hard {limit['hard']}: "
                        f"{getattr(e, 'strerror', None) or e}") from None


def environment(entries):
    env = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if sep:
            env[key] = value
    return env


def passwd_home(uid):
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5]
    except OSError:
        pass
    return "/"


def set_identity(process, plan, launch, env):
    """Capabilities and user, in runc's order: bounding set, keep caps across setuid, groups,
    gid, uid, then the effective/permitted/inheritable and ambient sets; then the cwd."""
    user = process.get("user", {})
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    if plan.host_id(uid, plan.uid_mappings) is None or plan.host_id(gid, plan.gid_mappings) is None:
        raise Error(f"cannot run as uid {uid} gid {gid}: not mapped in the container's user namespace")
    sets, unknown = capabilities.masks(process.get("capabilities"))
    if unknown:
        log.warning("ignoring unknown or unavailable capabilities: " + ", ".join(sorted(unknown)))
    capabilities.drop_bounding(sets["bounding"])  # no capabilities object means none (runc)
    os.umask(user.get("umask", 0o022))
    cwd = process["cwd"]
    chdir_later = False
    try:
        os.chdir(cwd)
    except PermissionError:
        chdir_later = True  # the container user may reach it where root squashing forbids us
    except OSError as e:
        raise Error(f"cannot change to process.cwd {cwd!r}: {e.strerror}") from None
    fix_stdio_ownership(uid)
    linux.prctl(linux.PR_SET_KEEPCAPS, 1)
    if setgroups_allowed():
        os.setgroups(user.get("additionalGids", []))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    linux.prctl(linux.PR_SET_KEEPCAPS, 0)
    capabilities.apply(sets)
    if chdir_later:
        try:
            os.chdir(cwd)
        except OSError as e:
            raise Error(f"cannot change to process.cwd {cwd!r} as uid {uid}: {e.strerror}") from None
    if "HOME" not in env:
        env["HOME"] = passwd_home(uid)
    return uid, gid


def setgroups_allowed():
    """False in a user namespace whose setgroups was denied (an unprivileged single-id map)."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def fix_stdio_ownership(uid):
    """Give the container user its stdio (a pty or pipe owned by root), except /dev/null."""
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if st.st_uid == uid or st.st_rdev == os.makedev(1, 3):
            continue
        try:
            os.fchown(fd, uid, -1)  # the uid only: the mount may prefer its own group (runc)
        except OSError:
            pass  # not ours to change (e.g. rootless): runc ignores EINVAL and EPERM too


def find_executable(name, search_path):
    """The path execve will run, resolved now so a missing binary fails `create`, as in runc
    (Go's exec.LookPath: a PATH entry that is not executable is passed over; a path given with
    a slash must be an executable file)."""
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in search_path.split(":")]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        executable = not os.path.isdir(candidate) and st.st_mode & 0o111
        if executable and os.access(candidate, os.X_OK):  # as the container user, now that we are it
            return candidate
        if "/" in name:
            raise Error(f"exec {name!r}: permission denied (not an executable file for uid {os.getuid()}); "
                        "check process.args[0]")
    if "/" in name:
        raise Error(f"exec {name!r}: no such file in the container; check process.args[0]")
    raise Error(f"exec {name!r}: executable file not found in $PATH ({search_path or 'PATH is empty'}); "
                "check process.args[0] and process.env")


def wait_for_start(fifo_fd, fd_dir):
    """Block until `crate-runc start` opens exec.fifo for reading, then tell it we are going.

    The write end stays open (close-on-exec): `start` reads until EOF, which comes when execve
    succeeds (or we die), so its poststart hooks run after the program started, as the
    runtime-spec asks."""
    if fd_dir is None:
        fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    else:
        fd = os.open(str(fifo_fd), os.O_WRONLY | os.O_CLOEXEC, dir_fd=fd_dir)
        os.close(fd_dir)
    os.write(fd, b"0")
    os.close(fifo_fd)
