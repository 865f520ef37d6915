"""Pseudo-terminals: the runtime's --console-socket, raw mode for the user's terminal, window sizes.

runc's console-socket contract: crate listens on a unix socket, passes its path to `create` or
`exec --tty`; the runtime opens a pty inside the container and sends the master over the socket
as one SCM_RIGHTS message. crate then owns the master: it relays it to the user's terminal (in raw
mode, following its window size) or, for a detached container, to the log.
"""
import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import tempfile
import termios
import time

from crate.errors import Error

DEFAULT_SIZE = (24, 80)


class ConsoleSocket:
    """A listening unix socket in a private temp dir (short path: sun_path has 108 bytes)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="crate-console-")
        self.path = os.path.join(self.dir, "console.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(self.path)
            self.sock.listen(1)
        except BaseException:
            self.close()
            raise

    def receive_master(self, process, timeout=60):
        """Wait for the runtime (`process`, a Popen) to connect and send the pty master -> fd.
        Returns None when the process exits without sending one (it failed: its error says why)."""
        deadline = time.monotonic() + timeout
        while True:
            if select.select([self.sock], [], [], 0.02)[0]:
                conn, _ = self.sock.accept()
                with conn:
                    return _receive_fd(conn)
            if process.poll() is not None:
                # it may have connected just before exiting
                if select.select([self.sock], [], [], 0)[0]:
                    continue
                return None
            if time.monotonic() > deadline:
                raise Error("the runtime did not send a terminal within a minute",
                            "check the runtime (--runtime) supports --console-socket")

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


def _receive_fd(conn):
    fds = []
    msg, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("i") * 4))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4]))
    if not fds:
        raise Error("the runtime sent no terminal over the console socket",
                    "check the runtime (--runtime) is runc-compatible")
    for extra in fds[1:]:
        os.close(extra)
    os.set_inheritable(fds[0], False)
    return fds[0]


def get_size(fd):
    """(rows, columns) of the terminal on fd, or None."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def set_size(fd, size):
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def user_size():
    """The window size of the user's terminal (stdin, stdout or stderr)."""
    for fd in (0, 1, 2):
        if os.isatty(fd):
            size = get_size(fd)
            if size:
                return size
    return None


@contextlib.contextmanager
def raw(fd):
    """The terminal on fd in raw mode (keys reach the container untouched); restored after."""
    if not os.isatty(fd):
        yield
        return
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def forwarding(pid, numbers=FORWARDED):
    """Pass the signals crate receives on to `pid` (a runtime process, which passes them on to
    the container's process) while the block runs."""
    def forward(number, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)
    saved = {number: signal.signal(number, forward) for number in numbers}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def relay(master, process, stdin_fd=None, out_fd=1):
    """Copy stdin_fd to the terminal's master and the master to out_fd until `process` (the
    runtime waiting for the process on the terminal) exits and the output ends. The user's
    terminal goes raw while keys are relayed; its window size is followed."""
    os.set_blocking(master, False)
    set_size(master, user_size() or DEFAULT_SIZE)

    def resize(number, frame):
        size = user_size()
        if size:
            set_size(master, size)
    saved_winch = signal.signal(signal.SIGWINCH, resize)
    pending = b""
    inputs = [master] + ([stdin_fd] if stdin_fd is not None else [])
    deadline = None
    try:
        with raw(stdin_fd) if stdin_fd is not None else contextlib.nullcontext():
            while master in inputs:
                if process.poll() is not None:
                    if deadline is None:
                        deadline = time.monotonic() + 1.0  # what the process wrote last
                        inputs = [master]
                    elif time.monotonic() > deadline:
                        break
                try:
                    readable, writable, _ = select.select(inputs, [master] if pending else [], [], 0.05)
                except InterruptedError:
                    continue
                if master in readable:
                    try:
                        data = os.read(master, 65536)
                    except BlockingIOError:
                        data = None
                    except OSError:  # EIO: no slave end is open any more
                        data = b""
                    if data:
                        write_all(out_fd, data)
                    elif data == b"":
                        inputs.remove(master)
                if stdin_fd is not None and stdin_fd in readable:
                    data = os.read(stdin_fd, 65536)
                    if data:
                        pending += data
                    else:
                        inputs.remove(stdin_fd)
                if pending and writable:
                    try:
                        pending = pending[os.write(master, pending):]
                    except BlockingIOError:
                        pass
                    except OSError:
                        pending = b""
    finally:
        signal.signal(signal.SIGWINCH, saved_winch)
        os.close(master)


def write_all(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        pass
