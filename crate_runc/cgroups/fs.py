"""cgroupfs files and directories: reading control files, writing them as the kernel wants (one
write(2) each), moving pids, listing and removing cgroup trees. Errors are OSError, or CgroupError
where a message for the user can be made here.
"""
import errno
import os
import time

from crate_runc.cgroups import CgroupError

MAX_UINT64 = (1 << 64) - 1   # how "max" reads (runc's GetCgroupParamUint): no limit


def read(directory, name):
    fd = os.open(f"{directory}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_int(directory, name):
    """An integer file; "max" reads as 2**64-1 like runc's GetCgroupParamUint."""
    text = read(directory, name).strip()
    return MAX_UINT64 if text == "max" else int(text)


def read_keyed(directory, name):
    """A "key value" per line file (memory.stat, cpu.stat ...) as {key: int}."""
    out = {}
    for line in read(directory, name).splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = MAX_UINT64 if parts[1] == "max" else int(parts[1])
    return out


def write_raw(directory, name, value):
    """Write value with one write(2), as the kernel wants; raises OSError."""
    fd = os.open(f"{directory}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def write(directory, name, value, field, hint=""):
    """Write a cgroup file; a refusal becomes a CgroupError naming the config field."""
    try:
        write_raw(directory, name, value)
    except OSError as e:
        if e.errno == errno.ENOENT and not os.path.isdir(directory):
            raise CgroupError(f"cannot set {field}: cgroup {directory} does not exist "
                              "(was the container's cgroup removed?)") from None
        if e.errno == errno.ENOENT:
            raise CgroupError(f"cannot set {field}: {directory}/{name} does not exist: the kernel or "
                              f"this cgroup lacks that controller{hint or '; remove the setting'}") from None
        raise CgroupError(f"cannot set {field}: the kernel refused {value!r} for {directory}/{name} "
                          f"({os.strerror(e.errno)}){hint or '; check the value'}") from None


def write_pid(directory, pid):
    """Move pid into the cgroup; raises OSError."""
    fd = os.open(f"{directory}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        for attempt in range(5):
            try:
                os.write(fd, str(pid).encode())
                return
            except OSError as e:
                # EINVAL may mean the task is still in TASK_NEW right after fork (runc retries too)
                if e.errno != errno.EINVAL or attempt == 4:
                    raise
                time.sleep(0.03)
    finally:
        os.close(fd)


def write_self(directory, name):
    """Move the calling process into the cgroup by writing "0" to `name` (cgroup.procs, or v1's
    tasks: for the calling, single-threaded process the kernel then skips its global
    threadgroup lock and the RCU grace period it waits out). Raises OSError."""
    fd = os.open(f"{directory}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def procs(directory):
    try:
        return [int(line) for line in read(directory, "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def controllers(directory):
    """The controllers a cgroup2 directory has (its cgroup.controllers); none when unreadable."""
    try:
        return read(directory, "cgroup.controllers").split()
    except OSError:
        return []


def tree_pids(directory):
    """Every pid in directory and its sub-cgroups (runc's GetAllPids)."""
    pids = procs(directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return pids
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            pids += tree_pids(entry.path)
    return pids


def _remove_tree(path):
    """rmdir a cgroup and its sub-cgroups, deepest first (runc's RemovePath); OSError on failure."""
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def remove_all(paths, parents=()):
    """Remove cgroup dirs, retrying 5 times with 10 ms doubling delays (runc's RemovePaths).

    Then remove the parents this container created, deepest first, when they are empty
    (runc leaves them behind; a parent another container still uses stays).
    """
    left = sorted(set(p for p in paths if p))
    delay = 0.01
    last = None
    for attempt in range(5):
        if attempt:
            time.sleep(delay)
            delay *= 2
        still = []
        for path in left:
            try:
                _remove_tree(path)
            except OSError as e:
                last = e
                still.append(path)
        left = still
        if not left:
            break
    if left:
        busy = {path: tree_pids(path) for path in left}
        detail = "; ".join(f"{p} (pids {' '.join(map(str, pids)) or 'none'})" for p, pids in busy.items())
        reason = os.strerror(last.errno) if last and last.errno else "busy"
        raise CgroupError(f"cannot remove cgroup {detail}: {reason}; stop the processes left in it "
                          "(crate-runc kill --all) and delete again")
    for parent in sorted(set(parents), key=len, reverse=True):
        try:
            os.rmdir(parent)
        except OSError:
            pass  # not empty (another container) or already gone


def makedirs(path, created):
    """mkdir -p, appending each directory actually made to created (for rollback/destroy)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        makedirs(parent, created)
    try:
        os.mkdir(path, 0o755)
        created.append(path)
    except FileExistsError:
        pass


def rollback(created):
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass
    del created[:]
