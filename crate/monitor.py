"""The per-container monitor (crate's conmon): it runs the container and stays with it.

It makes itself a child subreaper, runs `RUNTIME create` with the container's stdio (pipes, or a
console socket for a terminal) and `RUNTIME start`; when the runtime exits, the container's init
is re-parented to the monitor, which therefore gets its exit status from waitpid. While the
container runs it copies its output to the json log (and, in the foreground, to the user's
terminal), passes signals on, and follows the window size; when the init exits it reads what is
left, deletes the runtime's state, records the exit code and the time, and removes the container
when it was run with --rm.

A detached container gets its own monitor process (`python -m crate.monitor ROOT ID FD`, in a
new session with cwd /), which reports on FD that the container started, or why not. A
foreground `crate run` is its own monitor, attached to the user's terminal.

Anything the runtime writes before the container's process starts (it waits in exec.fifo until
`start`) is the runtime's, not the container's: it goes to monitor.log or into the error.
"""
import ctypes
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

from crate.containers import Store, now, proc_start_time
from crate.errors import Error
from crate.logs import LogWriter
from crate.runtime import Runtime, RuntimeFailed
from crate import terminal

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = terminal.FORWARDED  # INT TERM HUP QUIT USR1 USR2: passed on to the container
DRAIN_SECONDS = 2.0  # how long output may keep coming after the init exited


def make_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def exit_status(wait_status):
    """Docker's exit code: the exit status, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def start_error(message):
    """An Error for a container that could not start, with docker's exit statuses: 127 when its
    command does not exist, 126 when it cannot be run."""
    message = message.split("; ", 1)[0]  # crate-runc's own "; fix": crate gives its own
    text = message.lower()
    if "not found" in text or "no such file" in text or "no such executable" in text:
        return Error(f"cannot start the container: {message}",
                     "check the command (or the image's Entrypoint/Cmd) exists in the image", status=127)
    if "permission denied" in text or "not executable" in text:
        return Error(f"cannot start the container: {message}", "check the command is executable", status=126)
    return Error(f"cannot start the container: {message}",
                 "see the runtime's log (crate inspect shows the path)", status=125)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Attach:
    """The user's side of a foreground run: fds for the container's stdin (None: no input) and
    for its output, and whether the user's terminal goes raw for -it."""

    def __init__(self, stdin=None, stdout=1, stderr=2):
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr


class Monitor:
    def __init__(self, container, attach=None, notify=None):
        self.c = container
        self.attach = attach
        self.notify_fd = notify
        cfg = container.data.get("config", {})
        self.tty = bool(cfg.get("tty"))
        self.open_stdin = bool(cfg.get("stdin"))
        rt = container.data["runtime"]
        self.runtime = Runtime(rt["path"], rt["root"], log=container.runtime_log)
        self.init_pid = None
        self.status = None
        self.master = None
        self.streams = {}        # fd -> "stdout" / "stderr"
        self.keep_open = []      # fds held so the container's stdin never ends (detached -i)
        self.to_master = b""     # keys waiting to reach the container's terminal
        self.interrupts = 0
        self.wake_r = self.wake_w = None
        self.log = None

    # ------------------------------------------------------------ start
    def launch(self):
        """create + start; raises Error (nothing left behind: no runtime state, no process)."""
        make_subreaper()
        with self.c.lock():  # after the starting CLI let go of it
            self.c.reload()
        self.runtime.ensure_root()
        if os.path.exists(self.c.pid_file):
            os.unlink(self.c.pid_file)
        console = None
        child_fds = []
        chatter_r = None  # the runtime's own output when the container's goes to a terminal
        try:
            if self.tty:
                console = terminal.ConsoleSocket()
                chatter_r, chatter_w = os.pipe()
                stdin, stdout, stderr = subprocess.DEVNULL, chatter_w, chatter_w
                child_fds.append(chatter_w)
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                self.streams = {out_r: "stdout", err_r: "stderr"}
                child_fds += [out_w, err_w]
                stdout, stderr = out_w, err_w
                if self.open_stdin and self.attach is not None and self.attach.stdin is not None:
                    stdin = self.attach.stdin           # the user's stdin, as it is
                elif self.open_stdin:
                    in_r, in_w = os.pipe()              # open and silent: reads block, never EOF
                    self.keep_open.append(in_w)
                    child_fds.append(in_r)
                    stdin = in_r
                else:
                    stdin = subprocess.DEVNULL
            args = self.runtime.create_args(self.c.id, self.c.bundle, self.c.pid_file,
                                            console.path if console else None)
            for attempt in (1, 2):
                process, offset = self.runtime.spawn(*args, stdin=stdin, stdout=stdout, stderr=stderr)
                try:
                    if console is not None:
                        self.master = console.receive_master(process)
                    process.wait()
                except BaseException:
                    _stop(process)
                    raise
                # the container's process has not started: whatever is in the pipes is the runtime's
                chatter = b"".join(_read_available(fd) for fd in ([chatter_r] if chatter_r is not None else [])
                                   + list(self.streams)).decode(errors="replace")
                if chatter and self.attach is None:
                    sys.stderr.write(f"{self.runtime.name} create: {chatter}")
                    sys.stderr.flush()
                if process.returncode == 0:
                    break
                message = self.runtime.error_message(offset, chatter)
                if attempt == 1 and "exist" in message and "not exist" not in message:
                    # the runtime still has this container from a run whose monitor died: start afresh
                    self.runtime.delete(self.c.id, force=True)
                    continue
                raise start_error(message)
            for fd in child_fds:
                os.close(fd)
            child_fds = []
            if self.tty and self.master is None:
                raise Error(f"{self.runtime.name} created the container without sending its terminal",
                            "use a runtime that supports --console-socket")
            try:
                with open(self.c.pid_file) as f:
                    self.init_pid = int(f.read().strip())
            except (OSError, ValueError):
                raise Error(f"{self.runtime.name} create wrote no pid file",
                            "use a runc-compatible runtime") from None
            pid_start = proc_start_time(self.init_pid)
            if self.master is not None:
                os.set_blocking(self.master, False)
                size = terminal.user_size() if self.attach is not None else None
                terminal.set_size(self.master, size or terminal.DEFAULT_SIZE)
            self.log = LogWriter(self.c.log_path)
            try:
                self.runtime.start(self.c.id)
            except RuntimeFailed as e:
                raise start_error(e.message) from None
            with self.c.update():
                self.c.state.update(status="running", pid=self.init_pid, pid_start=pid_start, started_at=now(),
                                    finished_at=None, exit_code=None, error="")
        except BaseException:
            for fd in child_fds:
                os.close(fd)
            self._abort()
            raise
        finally:
            if console is not None:
                console.close()
            if chatter_r is not None:
                os.close(chatter_r)

    def _abort(self):
        """Undo a launch that failed half-way: no process, no runtime state left."""
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
                os.waitpid(self.init_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        try:
            self.runtime.delete(self.c.id, force=True)
        except Error as e:
            sys.stderr.write(f"crate monitor: {e}\n")
        self._close_streams()

    def _close_streams(self):
        """The container's stdio ends we hold, the pty master and the log."""
        for fd in list(self.streams) + self.keep_open + ([self.master] if self.master is not None else []):
            try:
                os.close(fd)
            except OSError:
                pass
        self.streams, self.keep_open, self.master = {}, [], None
        if self.log is not None:
            self.log.close()
            self.log = None

    # ------------------------------------------------------------ while it runs
    HANDLED = FORWARDED + (signal.SIGCHLD, signal.SIGWINCH)

    def _install_handlers(self):
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.saved_handlers = {number: signal.getsignal(number) for number in self.HANDLED}
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for number in self.HANDLED:
            signal.signal(number, lambda n, f: None)  # the wakeup fd carries the number

    def _restore_handlers(self):
        signal.set_wakeup_fd(-1)
        for number, handler in self.saved_handlers.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid and self.status is None:
                self.status = exit_status(status)

    def _signal(self, number):
        if number == signal.SIGCHLD:
            self._reap()
        elif number == signal.SIGWINCH:
            if self.master is not None and self.attach is not None:
                size = terminal.user_size()
                if size:
                    terminal.set_size(self.master, size)
        elif number in FORWARDED and self.status is None:
            if number == signal.SIGINT and self.attach is not None:
                self.interrupts += 1
                if self.interrupts >= 3:
                    sys.stderr.write("crate: interrupted three times: killing the container\n")
                    sys.stderr.flush()
                    number = signal.SIGKILL
            try:
                os.kill(self.init_pid, number)  # our child, not reaped yet: the pid is its own
            except ProcessLookupError:
                pass

    def _output(self, stream, data):
        self.log.write(stream, data)
        if self.attach is None:
            return
        fd = self.attach.stderr if stream == "stderr" else self.attach.stdout
        if fd is None:
            return
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:  # the reader went away (EPIPE): keep logging
            if stream == "stderr":
                self.attach.stderr = None
            else:
                self.attach.stdout = None

    def loop(self):
        """Copy output until the init has exited and its output has ended -> exit status."""
        self._install_handlers()
        try:
            self._reap()
            readers = dict(self.streams)
            if self.master is not None:
                readers[self.master] = "stdout"
            user_in = None
            if self.master is not None and self.open_stdin and self.attach is not None and self.attach.stdin is not None:
                user_in = self.attach.stdin
            deadline = None
            while readers or self.status is None:
                if self.status is not None:
                    if deadline is None:
                        deadline = time.monotonic() + DRAIN_SECONDS
                        user_in = None
                    elif time.monotonic() > deadline:
                        break
                watch = list(readers) + [self.wake_r] + ([user_in] if user_in is not None else [])
                writers = [self.master] if self.to_master and self.master is not None else []
                try:
                    readable, writable, _ = select.select(watch, writers, [], 0.5 if deadline is None else 0.05)
                except InterruptedError:
                    continue
                if self.wake_r in readable:
                    try:
                        for number in os.read(self.wake_r, 256):
                            self._signal(number)
                    except BlockingIOError:
                        pass
                for fd in readable:
                    if fd in readers:
                        try:
                            data = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        except OSError as e:  # EIO: the terminal's last slave end closed
                            if e.errno not in (errno.EIO, errno.EBADF):
                                raise
                            data = b""
                        if data:
                            self._output(readers[fd], data)
                        else:
                            self.log.flush(readers.pop(fd))
                    elif fd == user_in:
                        data = os.read(fd, 65536)
                        if data:
                            self.to_master += data
                        else:
                            user_in = None
                if writable and self.to_master:
                    try:
                        self.to_master = self.to_master[os.write(self.master, self.to_master):]
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.to_master = b""
            self._reap()
        finally:
            self._restore_handlers()
        if self.status is None:  # not ours any more (should not happen): ask how it ended
            self.status = 255
        return self.status

    # ------------------------------------------------------------ after it exited
    def finish(self):
        """Close everything, delete the runtime's state, record the exit, remove on --rm."""
        self._close_streams()
        deleted = True
        try:
            self.runtime.delete(self.c.id, force=True)
        except Error as e:
            sys.stderr.write(f"crate monitor: {e}\n")
            deleted = False
        auto_remove = False
        try:
            with self.c.update():
                if self.c.status != "removing":
                    self.c.state.update(status="exited", exit_code=self.status, finished_at=now(), pid=0,
                                        pid_start=None, runtime_state=not deleted)
                auto_remove = bool(self.c.data.get("auto_remove")) and self.c.status == "exited"
        except Error:
            return  # removed meanwhile (crate rm -f)
        if auto_remove:
            from crate import engine
            engine.destroy(self.c)

    def run(self):
        """launch, tell the waiting CLI, then wait() -> the container's exit status."""
        self.launch()
        if self.notify_fd is not None:
            _notify(self.notify_fd, {"ok": True})
            self.notify_fd = None
        return self.wait()

    def wait(self):
        """After launch(): relay and log until the container exits, then finish() -> its status."""
        raw_input = (self.attach is not None and self.master is not None and self.open_stdin
                     and self.attach.stdin is not None)
        try:
            if raw_input:
                with terminal.raw(self.attach.stdin):
                    status = self.loop()
            else:
                status = self.loop()
        except BaseException:
            self._kill_now()
            self.finish()
            raise
        self.finish()
        return status

    def _kill_now(self):
        if self.init_pid and self.status is None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
                _, raw = os.waitpid(self.init_pid, 0)
                self.status = exit_status(raw)
            except (ProcessLookupError, ChildProcessError):
                self.status = 137


def _stop(process):
    """A runtime command interrupted half-way: let it end (it cleans up after itself on TERM)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_available(fd):
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return b"".join(chunks)


def _notify(fd, message):
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv=None):
    """python -m crate.monitor ROOT ID FD: run a detached container (started by `crate start`)."""
    root, container_id, fd = (sys.argv[1:] if argv is None else argv)
    fd = int(fd)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    monitor = None

    def fail(error):
        if monitor is None or monitor.notify_fd is not None:  # the CLI still waits: tell it why
            _notify(fd, {"ok": False, "problem": error.problem, "fix": error.fix, "status": error.status})
        sys.stderr.write(f"{now()} {error}\n")

    try:
        container = Store(root).get(container_id)
        sys.stderr.write(f"{now()} monitor {os.getpid()} for {container_id[:12]}\n")
        sys.stderr.flush()
        monitor = Monitor(container, notify=fd)
        status = monitor.run()
    except KeyboardInterrupt:
        fail(Error("interrupted before the container started", "nothing was left running", 130))
        return 130
    except Error as e:
        fail(e)
        return 1
    except Exception as e:  # a bug: the CLI still gets one line, the traceback goes to monitor.log
        import traceback
        traceback.print_exc()
        fail(Error(f"the monitor failed: {type(e).__name__}: {e}", "see monitor.log in the container's directory",
                   125))
        return 1
    sys.stderr.write(f"{now()} container exited with status {status}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
