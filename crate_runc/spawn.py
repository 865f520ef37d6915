"""Parent side of `create`: fork, enter namespaces, hand the container init its pid namespace.

    crate-runc (parent) ── clone3(CLONE_NEW*, CLONE_INTO_CGROUP) ──> init (pid 1 in its new pid ns)

when every namespace is new. When some are joined by path, a stage 1 process comes first:

    crate-runc (parent) ── fork ──> stage 1: join the cgroups and the namespaces given by path,
                                    unshare the user namespace (the parent writes its id maps),
                                    unshare the others ── fork ──> init (pid 1 in a new pid ns)
                                    reports the init's pid and exits

Only children of a process that joins or unshares a pid namespace enter it, hence the second
fork. Python is single-threaded here, so plain fork/clone + unshare is safe (runc needs C for
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
    """Start the container init and drive it until it is ready -> its host pid.

    `on_hooks(pid)` runs the prestart and createRuntime hooks when the init asks for them, and
    `on_seccomp_listener(pid, fd)` gets the seccomp notify fd (copied from the init). On any
    failure the init is killed and reaped before the Error propagates.
    """
    sync = Sync()
    sys.stdout.flush()
    sys.stderr.flush()
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    child, init_pid = spawn_children(launch, sync)
    sync.as_parent()
    try:
        while True:
            line = sync.receive()
            if line is None:
                raise Error("the container init exited during set-up without saying why")
            kind, _, argument = line.partition(" ")
            if kind == "userns":  # from our direct child, which made the user namespace
                namespaces.write_id_maps(child, launch.plan.uid_mappings, launch.plan.gid_mappings)
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
        for pid in {init_pid, child} - {None}:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if init_pid:
            reap(init_pid)
        raise
    finally:
        if child != init_pid:
            reap(child)
        sync.close_parent()


def reap(pid):
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def spawn_children(launch, sync):
    """Start the init -> (our direct child, the init's pid or None until stage 1 reports it).

    With no namespace to join, one clone3 makes the init in all its new namespaces (and its
    cgroup2 cgroup) at once. Joining namespaces by path needs stage 1 first: a pid namespace
    one joins applies only to children, and the user namespace must be joined before the rest.
    """
    plan = launch.plan
    target = launch.cgroup.fork_target() if launch.cgroup is not None else None
    cgroup_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if target else None
    try:
        if not plan.join:
            flags = (plan.new_flags & ~linux.CLONE_NEWCGROUP) | (linux.CLONE_NEWUSER if plan.new_user else 0)
            try:
                pid = linux.clone(flags, cgroup_fd)
            except OSError:
                pass  # an older kernel: stage 1 below
            else:
                if pid == 0:
                    run_child(sync, lambda: init_prologue(launch, sync, cloned=cgroup_fd is not None))
                return pid, pid
        pid, cloned = 0, False
        if cgroup_fd is not None:
            try:
                pid, cloned = linux.clone(0, cgroup_fd), True
            except OSError:
                pid = os.fork()  # an older kernel: a plain fork, then a migration
        else:
            pid = os.fork()
        if pid == 0:
            run_child(sync, lambda: stage1(launch, sync, cloned))
        return pid, None
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)


def run_child(sync, body):
    """A child's whole life: `body` never returns (it execs or exits); failures go to the parent."""
    sync.as_child()
    try:
        body()
    except BaseException as e:  # noqa: B902 - report everything to the parent
        sync.send_error(e)
    os._exit(1)


def join_cgroups(launch, cloned):
    """Into the container's cgroups before anything else (children inherit them) and before any
    new cgroup namespace, which would hide them."""
    if launch.cgroup is not None:
        launch.cgroup.enter(skip_v2=cloned)


def become_root_in_user_namespace(launch, sync, made_here):
    if made_here:
        sync.send("userns")
        sync.wait(b"m")
    if launch.plan.has("user"):
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)


def init_prologue(launch, sync, cloned):
    """The init, cloned straight into its new namespaces: what stage 1 would have done."""
    join_cgroups(launch, cloned)
    become_root_in_user_namespace(launch, sync, launch.plan.new_user)
    if launch.plan.is_new("cgroup"):
        linux.unshare(linux.CLONE_NEWCGROUP)
    init.run(launch, sync)


def stage1(launch, sync, cloned):
    plan = launch.plan
    join_cgroups(launch, cloned)
    joins = plan.open_joins()
    for kind, fd in joins:
        if kind == "user":
            linux.setns(fd, linux.CLONE_NEWUSER)
    if plan.new_user:
        linux.unshare(linux.CLONE_NEWUSER)
    become_root_in_user_namespace(launch, sync, plan.new_user)
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
        init.run(launch, sync, init.setup_exec if launch.is_exec else init.setup)
    sync.send(f"pid {init_pid}")
    os._exit(0)
