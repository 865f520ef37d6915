"""A process run in the foreground (`run` and `exec` without --detach): signals are passed on,
a terminal is relayed when no console socket was given, and its exit status becomes ours."""
import os

from crate_runc import Error, signals

FORWARDED_SIGNALS = [n for n in range(1, 65) if n not in (9, 17, 19, 32, 33)]  # not KILL CHLD STOP, glibc's


def console_pair(terminal, console_socket, detach):
    """(our end, the process's end) of a socket pair carrying its pty master to us, when it has a
    terminal and nobody else takes the pty; (None, None) otherwise."""
    if not terminal or console_socket:
        return None, None
    if detach:
        raise Error("cannot allocate a tty for a detached process without --console-socket; "
                    "pass --console-socket or drop the terminal")
    import socket
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def forward_signals(pid, except_winch):
    """Pass every signal we receive on to `pid` (SIGWINCH resizes our own pty instead)."""
    import _signal

    def forward(number, frame):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    for number in FORWARDED_SIGNALS:
        if not (except_winch and number == signals.SIGWINCH):
            try:
                _signal.signal(number, forward)
            except (OSError, ValueError):
                pass


def wait(pid, console_end):
    """Wait for `pid` (our child: we are a child subreaper), relaying its pty if we hold the
    console end -> its exit status, 128+N when killed by signal N."""
    if console_end is not None:
        from crate_runc import console
        master = console.receive_fd(console_end)
        console_end.close()
        status = console.relay(master, pid)
    else:
        status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
