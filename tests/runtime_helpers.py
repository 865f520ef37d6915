"""Helpers for crate-runc tests: bundles on a shared busybox rootfs, and the runtime as a user runs it."""
import json
import os
import pwd
import shutil
import subprocess
import tarfile
import io

import oci_images

CGROUP_PARENT = "crate-tests"


def runtime_binary():
    path = shutil.which("crate-runc")
    if path is None:
        raise RuntimeError("crate-runc is not on PATH (run the tests through `make test`)")
    return os.path.realpath(path)  # the venv may sit outside a checkout the test user cannot reach


def extract_busybox_rootfs(busybox, dest):
    """A busybox root filesystem made from Debian's busybox-static (the same tree as the test images)."""
    tar = oci_images.busybox_rootfs_tar(busybox, marker="amd64")
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, numeric_owner=True)  # our own tar, built above
    return dest


class Runtime:
    """crate-runc with its own --root; optionally run as an unprivileged user through setpriv."""

    def __init__(self, root, user=None, log=None):
        self.root = root
        self.user = user
        self.log = log
        self.binary = runtime_binary()

    def command(self, *args, log_format=None):
        argv = [self.binary, "--root", self.root]
        if self.log:
            argv += ["--log", self.log] + (["--log-format", log_format] if log_format else [])
        argv += [str(a) for a in args]
        if self.user:
            entry = pwd.getpwnam(self.user)
            argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                    "env", "-i", f"HOME={self.root}", f"XDG_RUNTIME_DIR={self.root}",
                    "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"] + argv
        return argv

    def __call__(self, *args, check=True, timeout=60, log_format=None, **kwargs):
        """Run crate-runc; stdout/stderr are captured in files, not pipes, because a container
        started by create or run -d inherits them and would keep a pipe open."""
        kwargs.setdefault("text", True)
        if kwargs.pop("capture_output", True):
            import tempfile
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                done = subprocess.run(self.command(*args, log_format=log_format), timeout=timeout,
                                      stdout=kwargs.pop("stdout", out), stderr=kwargs.pop("stderr", err),
                                      **kwargs)
                out.seek(0)
                err.seek(0)
                decode = (lambda b: b.decode(errors="replace")) if kwargs.get("text") else (lambda b: b)
                done.stdout, done.stderr = decode(out.read()), decode(err.read())
        else:
            done = subprocess.run(self.command(*args, log_format=log_format), timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"crate-runc {' '.join(map(str, args))} failed ({done.returncode}): "
                                 f"{done.stderr}{done.stdout}")
        return done

    def state(self, container_id):
        return json.loads(self("state", container_id).stdout)

    def ids(self):
        return self("list", "-q").stdout.split()


def make_bundle(path, rootfs, args, rootless=False, user=None, **changes):
    """A bundle at `path` whose config is `crate-runc spec` plus `changes` (dotted keys allowed:
    {"process.cwd": "/tmp"}); root.path points at the shared read-only `rootfs`."""
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, "config.json")):
        os.unlink(os.path.join(path, "config.json"))
    cmd = [runtime_binary(), "spec", "--bundle", path] + (["--rootless"] if rootless else [])
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"] + cmd
    subprocess.run(cmd, check=True, capture_output=True)
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = list(args)
    config["root"] = {"path": rootfs, "readonly": True}
    if not rootless:
        config["linux"]["cgroupsPath"] = cgroups_path_for(path)
    for key, value in changes.items():
        target = config
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = value
    with open(config_path, "w") as f:
        json.dump(config, f, indent=1)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chown(config_path, entry.pw_uid, entry.pw_gid)
    return config


def cgroups_path_for(bundle):
    """A cgroup path unique to this bundle directory (tests reuse bundle names)."""
    import hashlib
    digest = hashlib.sha1(os.path.abspath(str(bundle)).encode()).hexdigest()[:10]
    return f"/{CGROUP_PARENT}/{os.path.basename(str(bundle))}-{digest}"


def processes_in(rootfs):
    """Pids of processes whose root directory is `rootfs` (a container's processes)."""
    found = []
    real = os.path.realpath(rootfs)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/root") == real:
                    found.append(int(name))
            except OSError:
                pass
    return found


def mounts_under(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(real)]


def cgroup_dirs(bundle):
    """Every cgroup directory crate-runc could have made for the bundle at `bundle`."""
    relative = cgroups_path_for(bundle).lstrip("/")
    found = []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        candidate = os.path.join("/sys/fs/cgroup", hierarchy, relative)
        if os.path.isdir(candidate):
            found.append(candidate)
    candidate = os.path.join("/sys/fs/cgroup", relative)
    if os.path.isdir(candidate) and os.path.exists(os.path.join(candidate, "cgroup.procs")):
        found.append(candidate)
    return found


def runc_sleep_bundle(directory, applets=("sh", "sleep")):
    """A minimal bundle for Debian's runc itself (to compare crate-runc with it): busybox plus a
    few applets, `runc spec` with args `sleep 3600` and no terminal -> the config dict."""
    busybox = oci_images.find_static_busybox()
    rootfs = os.path.join(directory, "rootfs")
    for sub in ("bin", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, sub))
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    for name in applets:
        os.symlink("busybox", os.path.join(rootfs, "bin", name))
    subprocess.run(["runc", "spec", "--bundle", directory], check=True)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sleep", "3600"]
    return config


def receive_pty_master(server):
    """Accept one console-socket connection and take the pty master fd it carries."""
    import socket
    import struct
    conn, _ = server.accept()
    _, ancillary, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(4))
    conn.close()
    return struct.unpack("i", ancillary[0][2][:4])[0]


def read_pty(master):
    """Everything the container writes to its terminal, until every slave end is closed."""
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the container closed the slave
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return output
