"""Parent side of `create`: fork, enter namespaces, hand the container init its pid namespace.

    crate-runc (parent) ── fork ──> stage 1: join the cgroup and namespaces given by path,
                                    unshare the user namespace (the parent writes its id maps),
                                    unshare the others ── fork ──> init (pid 1 in a new pid ns)
                                    reports the init's pid and exits

Only children of a process that unshared CLONE_NEWPID enter the new pid namespace, hence the
second fork. Python is single-threaded here, so plain fork + unshare is safe (runc needs C for
this because Go is multithreaded). The parent is a child subreaper, so the init becomes its
child once stage 1 exits: `run` can wait for it and a failed create can reap it.

Stage 1 and the init talk to the parent over two pipes with one-line messages:
    up   (children -> parent): "userns", "pid N", "hooks", "ready", "error MSG",
           "seccomp FD" (the init's seccomp notify fd number)
    down (parent -> children): b"m" (id maps written), b"h" (hooks ran), b"s" (listener fd sent)
"""
import os
import sys

from crate_runc import Error, init, linux, namespaces  # init: loaded before fork, shared by the children


class Sync:
    def __init__(self):
        self.up_r, self.up_w = os.pipe()
        self.down_r, self.down_w = os.pipe()
        self._buffer = b""

    # child side
    def as_child(self):
        os.close(self.up_r)
        os.close(self.down_w)

    def send(self, line):
        os.write(self.up_w, line.replace("\n", " ").encode("utf-8", "replace") + b"\n")

    def send_error(self, exc):
        """Report a failure to the parent -> False when the parent no longer listens."""
        if isinstance(exc, OSError) and exc.strerror:
            message = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        else:
            message = str(exc) or type(exc).__name__
        try:
            self.send("error " + message)
            return True
        except OSError:
            return False

    def wait(self, expected):
        got = os.read(self.down_r, 1)
        if got != expected:
            raise Error("the runtime parent went away during set-up")

    def close(self):
        os.close(self.up_w)
        os.close(self.down_r)
        self.up_w = self.down_r = -1

    # parent side
    def as_parent(self):
        os.close(self.up_w)
        os.close(self.down_r)

    def receive(self):
        """The next line from a child, or None at EOF (every child closed its end)."""
        while b"\n" not in self._buffer:
            chunk = os.read(self.up_r, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, byte):
        os.write(self.down_w, byte)

    def close_parent(self):
        os.close(self.up_r)
        os.close(self.down_w)


def start_init(launch, on_hooks, on_seccomp_listener):
    """Fork the container init and drive it until it is ready -> its host pid.

    `on_hooks(pid)` runs the prestart and createRuntime hooks when the init asks for them, and
    `on_seccomp_listener(pid, fd)` gets the seccomp notify fd (copied from the init). On any
    failure the init is killed and reaped before the Error propagates.
    """
    sync = Sync()
    sys.stdout.flush()
    sys.stderr.flush()
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    stage1_pid, cloned = fork_stage1(launch.cgroup)
    if stage1_pid == 0:
        sync.as_child()
        try:
            stage1(launch, sync, cloned)
        except BaseException as e:  # noqa: B902 - report everything to the parent
            sync.send_error(e)
        os._exit(1)
    sync.as_parent()
    init_pid = None
    try:
        while True:
            line = sync.receive()
            if line is None:
                raise Error("the container init exited during set-up without saying why")
            kind, _, argument = line.partition(" ")
            if kind == "userns":
                namespaces.write_id_maps(stage1_pid, launch.plan.uid_mappings, launch.plan.gid_mappings)
                sync.reply(b"m")
            elif kind == "pid":
                init_pid = int(argument)
            elif kind == "hooks":
                on_hooks(init_pid)
                sync.reply(b"h")
            elif kind == "seccomp":
                listener = linux.pidfd_getfd(init_pid, int(argument))
                try:
                    on_seccomp_listener(init_pid, listener)
                finally:
                    os.close(listener)
                sync.reply(b"s")
            elif kind == "ready":
                return init_pid
            elif kind == "error":
                raise Error(argument)
    except BaseException:
        for pid in (init_pid, stage1_pid):
            if pid:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        if init_pid:
            reap(init_pid)
        raise
    finally:
        reap(stage1_pid)
        sync.close_parent()


def reap(pid):
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def fork_stage1(cgroup):
    """Fork stage 1 -> (pid or 0 in the child, whether it was born in the cgroup2 hierarchy).

    Cloning straight into the container's cgroup2 directory spares the slow migration there; the
    v1 hierarchies are joined cheaply by stage 1 itself (cgroups.Manager.enter)."""
    target = cgroup.fork_target() if cgroup is not None else None
    if target:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return linux.fork_into_cgroup(fd), True
        except OSError:
            pass  # an older kernel: a plain fork, then a migration
        finally:
            os.close(fd)
    return os.fork(), False


def stage1(launch, sync, cloned):
    plan = launch.plan
    if launch.cgroup is not None:
        # in the cgroups before anything else (the init inherits them), before any new cgroup
        # namespace, which would hide them
        launch.cgroup.enter(skip_v2=cloned)
    joins = plan.open_joins()
    for kind, fd in joins:
        if kind == "user":
            linux.setns(fd, linux.CLONE_NEWUSER)
    if plan.new_user:
        linux.unshare(linux.CLONE_NEWUSER)
        sync.send("userns")
        sync.wait(b"m")
    if plan.has("user"):
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    for kind, fd in joins:
        if kind != "user":
            try:
                linux.setns(fd, namespaces.FLAGS[kind])
            except OSError as e:
                raise Error(f"cannot join {kind} namespace {plan.types[kind]!r}: {e.strerror}") from None
        os.close(fd)
    if plan.new_flags:
        linux.unshare(plan.new_flags)
    init_pid = os.fork()
    if init_pid == 0:
        init.run(launch, sync)
    sync.send(f"pid {init_pid}")
    os._exit(0)
