"""Any runc-compatible runtime (crate-runc, runc, crun, ...) driven through its command line.

The runc CLI is the seam between crate and the runtime, as between podman and runc: create (its
process waits on exec.fifo), start, state, kill, delete and exec, each a subprocess with
`--root DIR` (crate's own state directory per runtime) and `--log FILE --log-format json`, from
which the last error's "msg" is read when a command fails (as containerd does).

Runtime commands run in their own process group, so a Ctrl-C at the terminal reaches crate
(which then cleans up) and not a runtime halfway through a create.
"""
import json
import os
import shutil
import subprocess
import sys

from crate.errors import Error

DEFAULT = "crate-runc"


class RuntimeFailed(Error):
    """A runtime command exited non-zero; .message is what the runtime said."""

    def __init__(self, command, message, status=1):
        self.command, self.message = command, message
        super().__init__(f"{command} failed: {message}", status=status)


def find(name=None):
    """The runtime binary for --runtime NAME|PATH (default: crate-runc from this installation)."""
    name = name or DEFAULT
    if "/" in name:
        path = os.path.abspath(name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise Error(f"runtime {name!r} is not an executable file",
                        "give the path of a runc-compatible binary, or a name on PATH (runc, crun)")
        return path
    if name == DEFAULT:
        # the crate-runc installed beside this crate (same venv or prefix) before any on PATH
        places = [os.path.dirname(os.path.abspath(sys.argv[0]))] if os.sep in (sys.argv[0] or "") else []
        places.append(os.path.dirname(sys.executable))
        for place in places:
            candidate = os.path.join(place, DEFAULT)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(name)
    if found is None:
        raise Error(f"runtime {name!r} not found on PATH",
                    f"install it (e.g. apt-get install {name}) or pass --runtime /path/to/{name}")
    return os.path.abspath(found)


def run_dir():
    """Where crate keeps state that must not outlive a reboot (runtime roots)."""
    if os.geteuid() == 0:
        return "/run/crate"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir) and os.access(runtime_dir, os.W_OK):
        return os.path.join(runtime_dir, "crate")
    return f"/tmp/crate-{os.geteuid()}"


def default_root(path):
    """The runtime's --root for crate's containers: one per runtime binary name."""
    return os.path.join(run_dir(), os.path.basename(path))


class Runtime:
    def __init__(self, path, root=None, log=None):
        self.path = path
        self.root = root or default_root(path)
        self.log = log
        self.name = os.path.basename(path)

    def argv(self, *args):
        argv = [self.path, "--root", self.root]
        if self.log:
            argv += ["--log", self.log, "--log-format", "json"]
        return argv + [str(a) for a in args]

    def ensure_root(self):
        parent = os.path.dirname(self.root)
        os.makedirs(parent, mode=0o711 if os.geteuid() == 0 else 0o700, exist_ok=True)
        st = os.lstat(parent)
        if st.st_uid != os.geteuid() or not os.path.isdir(parent) or os.path.islink(parent):
            raise Error(f"{parent} belongs to someone else (or is a link)",
                        "set XDG_RUNTIME_DIR to a directory of your own")

    # ------------------------------------------------------------ running commands
    def _log_offset(self):
        try:
            return os.path.getsize(self.log) if self.log else 0
        except OSError:
            return 0

    def error_message(self, log_offset, stderr_text):
        """The runtime's own words for a failure: the last error in its json log since
        log_offset, else the last line it wrote on stderr."""
        message = None
        if self.log:
            try:
                with open(self.log, "rb") as f:
                    f.seek(log_offset)
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                lines = []
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
                    message = str(entry["msg"])
        if not message:
            text = [line.strip() for line in (stderr_text or "").splitlines() if line.strip()]
            message = text[-1] if text else "no error message"
        for prefix in (f"{self.name}: ", "crate-runc: ", "runc: "):
            if message.startswith(prefix):
                message = message[len(prefix):]
        return message

    def call(self, *args, timeout=60, check=True):
        """Run one runtime command to completion -> CompletedProcess (stdout text)."""
        offset = self._log_offset()
        try:
            done = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout, process_group=0, errors="replace")
        except FileNotFoundError:
            raise Error(f"runtime {self.path} is gone", "reinstall it, or use --runtime to choose another") from None
        except subprocess.TimeoutExpired:
            raise RuntimeFailed(f"{self.name} {args[0]}", f"no answer within {timeout} s") from None
        if check and done.returncode != 0:
            raise RuntimeFailed(f"{self.name} {args[0]}", self.error_message(offset, done.stderr))
        return done

    def spawn(self, *args, stdin=None, stdout=None, stderr=None, pass_fds=(), own_group=True):
        """Start a runtime command without waiting (create, exec) -> (Popen, log offset)."""
        offset = self._log_offset()
        try:
            process = subprocess.Popen(self.argv(*args), stdin=stdin, stdout=stdout, stderr=stderr,
                                       pass_fds=pass_fds, process_group=0 if own_group else None)
        except FileNotFoundError:
            raise Error(f"runtime {self.path} is gone", "reinstall it, or use --runtime to choose another") from None
        return process, offset

    # ------------------------------------------------------------ the runc commands
    def create_args(self, container_id, bundle, pid_file, console_socket=None):
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        return args + [container_id]

    def start(self, container_id):
        self.call("start", container_id)

    def state(self, container_id):
        """The runtime's state document, or None when it has no such container."""
        done = self.call("state", container_id, check=False)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    def kill(self, container_id, signal_number, all_processes=False):
        self.call("kill", *(["--all"] if all_processes else []), container_id, str(signal_number))

    def delete(self, container_id, force=False):
        """Delete the runtime's state of the container; no error when it has none."""
        done = self.call("delete", *(["--force"] if force else []), container_id, check=False)
        if done.returncode != 0 and self.state(container_id) is not None:
            raise RuntimeFailed(f"{self.name} delete", self.error_message(0, done.stderr))

    def exec_args(self, container_id, args, tty=False, env=(), cwd=None, user=None, console_socket=None,
                  pid_file=None):
        out = ["exec"]
        if pid_file:
            out += ["--pid-file", pid_file]
        if tty:
            out.append("--tty")
        if console_socket:
            out += ["--console-socket", console_socket]
        for item in env:
            out += ["--env", item]
        if cwd:
            out += ["--cwd", cwd]
        if user:
            out += ["--user", user]
        # no "--": runc takes everything after the id as the command (and would exec "--")
        return out + [container_id] + list(args)
