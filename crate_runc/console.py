"""Pseudo-terminals: made inside the container, handed to the caller over a unix socket.

runc's console-socket contract: the runtime connects to the socket, opens /dev/ptmx in the
container's devpts, sends the master as one message with SCM_RIGHTS (payload: the master's path,
/dev/ptmx), and makes the slave the process's stdin, stdout, stderr and controlling terminal.
"""
import fcntl
import os
import struct
import termios

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def connect(path):
    """Connect to a --console-socket before the container starts (its path is a host path)."""
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        from crate_runc import Error
        raise Error(f"cannot connect to console socket {path!r}: {e.strerror}") from None
    return sock


def open_pty():
    """Open a new pty in the current /dev/pts -> (master fd, slave path)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    return master, f"/dev/pts/{number}"


def set_size(fd, height, width):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def copy_size(from_fd, to_fd):
    try:
        size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def become_terminal(slave_path):
    """Make the slave this process's stdio and controlling terminal."""
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def send_fd(sock, fd, payload=b"/dev/ptmx"):
    import socket
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])


def receive_fd(sock):
    import socket
    msg, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("i")))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            return struct.unpack("i", data[:4])[0]
    raise OSError("no file descriptor received on the console socket")


def relay(master, pid):
    """Copy our stdin to the pty and the pty to our stdout until `pid` exits -> its wait status.

    Our terminal (if stdin is one) goes raw so keys reach the container untouched, and follows
    window size changes."""
    import _signal
    import select
    saved = None
    if os.isatty(0):
        import tty
        saved = termios.tcgetattr(0)
        tty.setraw(0)
        copy_size(0, master)
        _signal.signal(28, lambda number, frame: copy_size(0, master))  # SIGWINCH
    inputs = [0, master]
    status = None
    try:
        while status is None:
            readable = select.select(inputs, [], [], 0.1)[0]
            if 0 in readable:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end is closed
                    data = b""
                if data:
                    os.write(1, data)
                else:
                    inputs.remove(master)
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
        while master in inputs and select.select([master], [], [], 0)[0]:  # what is still buffered
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            os.write(1, data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    return status
