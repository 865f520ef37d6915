"""Rootless work in a user namespace that maps image ids onto the caller's subordinate ids.

As podman does: container uid 0 is the caller, uids 1..N are the caller's /etc/subuid range
(set up through the setuid newuidmap/newgidmap helpers). Layers extracted in there keep their
owners (uid 1000 in the image is subuid_start+999 on the host), and a rootless container using the
same mapping sees them as the image meant. Without a subordinate range only the caller is mapped:
files then all belong to the caller (ownership cannot be kept, as with podman's ignore_chown_errors).
"""
import os
import pickle
import pwd
import grp
import shutil
import signal
import subprocess
import traceback
from dataclasses import dataclass

from crate_image.errors import ImageError

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000


def unshare(flags):
    """os.unshare arrived in Python 3.12; libc's works everywhere."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class UsernsUnavailable(ImageError):
    """The kernel or a sysctl refuses unprivileged user namespaces."""


@dataclass(frozen=True)
class IdMap:
    container_id: int
    host_id: int
    size: int

    def as_spec(self):
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


def _subids(path, name, ident):
    ranges = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(ident)):
                    ranges.append((int(parts[1]), int(parts[2])))
    except (OSError, ValueError):
        pass
    return ranges


def id_maps(uid=None, gid=None):
    """(uid maps, gid maps) for the caller: 0 -> caller, 1.. -> first subordinate range (if any)."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    uids = [IdMap(0, uid, 1)]
    gids = [IdMap(0, gid, 1)]
    sub_u = _subids("/etc/subuid", user, uid)
    sub_g = _subids("/etc/subgid", user, uid) or _subids("/etc/subgid", group, gid)
    if sub_u and sub_g and shutil.which("newuidmap") and shutil.which("newgidmap"):
        uids.append(IdMap(1, sub_u[0][0], sub_u[0][1]))
        gids.append(IdMap(1, sub_g[0][0], sub_g[0][1]))
    return uids, gids


def in_userns():
    """True inside a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def needed():
    return os.geteuid() != 0


def _write_maps(pid, uids, gids):
    if len(uids) > 1:
        for tool, maps in (("newuidmap", uids), ("newgidmap", gids)):
            args = [tool, str(pid)] + [str(v) for m in maps for v in (m.container_id, m.host_id, m.size)]
            out = subprocess.run(args, capture_output=True, text=True)
            if out.returncode != 0:
                raise ImageError(f"{tool} failed: {out.stderr.strip() or out.returncode}",
                                 "check /etc/subuid and /etc/subgid for your user (usermod --add-subuids)")
        return
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uids[0].host_id} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gids[0].host_id} 1\n")


def run(fn, *args, mount_ns=False, **kwargs):
    """Run fn(*args, **kwargs) in a forked child inside a new user namespace; return its result
    or raise its exception here. Call it from a single-threaded process (it forks)."""
    uids, gids = id_maps()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(result_r)
            unshare(CLONE_NEWUSER | (CLONE_NEWNS if mount_ns else 0))
            os.write(ready_w, b"1")
            if os.read(go_r, 1) != b"1":
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            if len(gids) > 1:
                os.setgroups([])
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException as e:  # carried to the parent, which raises it
                try:
                    payload = pickle.dumps(("error", e))
                except Exception:
                    payload = pickle.dumps(("error", ImageError(f"{type(e).__name__}: {e}",
                                                                traceback.format_exc(limit=3))))
            with os.fdopen(result_w, "wb") as f:
                f.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(go_r)
    os.close(result_w)
    try:
        if os.read(ready_r, 1) != b"1":
            raise UsernsUnavailable("could not create a user namespace",
                                    "enable unprivileged user namespaces (sysctl user.max_user_namespaces)")
        try:
            _write_maps(pid, uids, gids)
        except BaseException:
            os.write(go_w, b"0")
            raise
        os.write(go_w, b"1")
        try:
            with os.fdopen(result_r, "rb") as f:
                result_r = None
                data = f.read()
        except BaseException:
            # a signal that reached only us (SIGTERM from a supervisor, Ctrl-C from a non-tty
            # parent): pass it on so the helper cleans up as we would, then wait for it
            os.kill(pid, signal.SIGTERM)
            raise
    finally:
        for fd in (ready_r, go_w, result_r):
            if fd is not None:
                os.close(fd)
        _, status = os.waitpid(pid, 0)
    if not data:
        raise ImageError(f"the user-namespace helper died (status {status})", "see the messages above")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value


_warned = False


def maybe(fn, *args, **kwargs):
    """fn in a user namespace when rootless and not already in one; directly otherwise. Where user
    namespaces are disabled, fn runs as the plain user: files then keep no owners but the user's
    (as podman with ignore_chown_errors), and a warning says so once."""
    global _warned
    if not needed() or in_userns():
        return fn(*args, **kwargs)
    try:
        return run(fn, *args, **kwargs)
    except UsernsUnavailable as e:
        if not _warned:
            import sys
            sys.stderr.write(f"crate-image: warning: {e}; image files will all belong to you\n")
            _warned = True
        return fn(*args, **kwargs)


def is_real_root():
    """Root in the initial user namespace (device nodes, trusted.* xattrs, plain overlay)."""
    return os.geteuid() == 0 and not in_userns()


def overlay_xattr_ns():
    """trusted.overlay.* for a root overlay mount, user.overlay.* for rootless (userxattr)."""
    return "trusted" if is_real_root() else "user"
