"""crate exec: a command in a running container, through the runtime's exec.

With -t, crate listens on a console socket, the runtime sends the pty master, and crate relays it
to the user's terminal (raw mode, window size followed). Without, the command gets crate's stdout
and stdin (-i) as they are, and its stderr through a pipe that crate passes on: the runtime shares
that pipe, so what it writes before the process exists is held back, and becomes crate's one-line
error when the exec fails. Signals crate receives go to the runtime, which passes them on.
"""
import contextlib
import os
import subprocess
import time

from crate import terminal
from crate.engine import expand_env, is_running, runtime_of
from crate.errors import Error
from crate.monitor import start_error


def _exec_user(container, user):
    """USER[:GROUP] by name or number -> "uid:gid" (and the home) through the container's /etc/passwd."""
    from crate_image import bundle as bundles
    from crate_image.errors import ImageError
    try:
        uid, gid, _, home = bundles.resolve_user(user, os.path.join(container.bundle, "rootfs"))
    except ImageError as e:
        raise Error(e.problem, e.fix) from None
    return f"{uid}:{gid}", home


def run(container, command, *, tty=False, interactive=False, env=(), workdir=None, user=None):
    """Run a command in a running container through the runtime's exec -> its exit status."""
    if not command:
        raise Error("no command to run", "give one: crate exec CONTAINER COMMAND [ARG...]")
    if not is_running(container) or container.status != "running":
        raise Error(f"container {container.name} is not running", f"start it first (crate start {container.name})")
    if tty and interactive and not os.isatty(0):
        raise Error("the input device is not a TTY", "drop -t, or run crate from a terminal")
    if workdir is not None and not workdir.startswith("/"):
        raise Error(f"the working directory {workdir!r} is not absolute", "give a path starting with /")
    env = expand_env(env)
    user_arg = None
    if user:
        user_arg, home = _exec_user(container, user)
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home}")
    rt = runtime_of(container)
    console = terminal.ConsoleSocket() if tty else None
    import tempfile
    chatter = tempfile.TemporaryFile()
    pid_file = os.path.join(container.dir, f"exec-{os.getpid()}-{time.monotonic_ns()}.pid")
    err_r = err_w = None
    try:
        args = rt.exec_args(container.id, command, tty=tty, env=env, cwd=workdir, user=user_arg,
                            console_socket=console.path if console else None, pid_file=pid_file)
        if tty:
            process, offset = rt.spawn(*args, stdin=subprocess.DEVNULL, stdout=chatter, stderr=chatter)
        else:
            err_r, err_w = os.pipe()
            process, offset = rt.spawn(*args, stdin=0 if interactive else subprocess.DEVNULL, stdout=1,
                                       stderr=err_w)
            os.close(err_w)
        with terminal.forwarding(process.pid):
            if console is not None:
                try:
                    master = console.receive_master(process)
                finally:
                    console.close()
                    console = None
                if master is not None:
                    terminal.relay(master, process, 0 if interactive else None, 1)
            else:
                _relay_stderr(err_r, process, pid_file)
            status = process.wait()
        if status != 0:
            message = _runtime_error_since(rt, offset)
            if message:
                error = start_error(message)
                raise Error(error.problem.replace("cannot start the container", "cannot exec"), error.fix,
                            error.status)
        return status
    finally:
        if console is not None:
            console.close()
        chatter.close()
        if err_r is not None:
            os.close(err_r)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)


def _relay_stderr(fd, process, pid_file):
    """Pass the exec'd process's stderr on as it comes. The runtime shares that pipe: what it
    wrote before the process existed (its pid file is written once it does) is held back, and
    dropped when the runtime fails (its error becomes crate's one line)."""
    import select
    held = b""
    started = False
    while True:
        readable = select.select([fd], [], [], 0.05)[0]
        if not started and os.path.exists(pid_file):
            started = True
            terminal.write_all(2, held)
            held = b""
        if readable:
            data = os.read(fd, 65536)
            if not data:
                return  # every writer is gone
            if started:
                terminal.write_all(2, data)
            else:
                held += data
        elif process.poll() is not None:
            return  # the runtime is done; a background child of the process may keep the pipe open


def _runtime_error_since(rt, offset):
    message = rt.error_message(offset, "")
    return None if message == "no error message" else message
