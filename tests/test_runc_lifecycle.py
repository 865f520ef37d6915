"""crate-runc's lifecycle as clients drive it: create/start/state/kill/delete, run, stdio, pty."""
import json
import os
import socket
import struct
import subprocess
import time

import pytest

from runtime_helpers import cgroup_dirs, cgroups_path_for, make_bundle, mounts_under, processes_in

pytestmark = pytest.mark.root

LOOP = ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.05; done"]


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def assert_nothing_left(runtime, bundle, rootfs):
    assert runtime.ids() == []
    assert cgroup_dirs(bundle) == []
    assert processes_in(rootfs) == []
    assert mounts_under(str(bundle)) == [] and mounts_under(rootfs) == []


def test_create_start_state_kill_delete(runtime, tmp_path, busybox_rootfs):
    bundle = tmp_path / "c1"
    make_bundle(bundle, busybox_rootfs, LOOP)
    pid_file = tmp_path / "pid"
    out = open(tmp_path / "out", "w")
    runtime("create", "--bundle", bundle, "--pid-file", pid_file, "c1", stdout=out, stderr=out)
    raw = pid_file.read_text()
    assert raw.isdigit() and not raw.endswith("\n")
    pid = int(raw)
    state = runtime.state("c1")
    assert state["status"] == "created" and state["pid"] == pid
    assert state["id"] == "c1" and state["bundle"] == str(bundle) and state["ociVersion"].startswith("1.")
    # created: the init waits before exec; nothing of the program ran yet
    assert (tmp_path / "out").read_text() == ""
    with open(f"/proc/{pid}/status") as f:
        assert "NSpid:" in f.read()
    # it is in its cgroups (every hierarchy, cgroup2 included) and namespaces already
    with open(f"/proc/{pid}/cgroup") as f:
        memberships = [line.rstrip("\n").split(":", 2) for line in f]
    assert memberships and all(path == cgroups_path_for(bundle) for _, _, path in memberships), memberships
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    started = time.monotonic()
    runtime("start", "c1")
    assert time.monotonic() - started < 5  # start does not wait for the process
    assert wait_for(lambda: "started" in (tmp_path / "out").read_text())
    assert runtime.state("c1")["status"] == "running"
    assert runtime.ids() == ["c1"]
    listing = json.loads(runtime("list", "--format=json").stdout)
    assert [s["id"] for s in listing] == ["c1"] and listing[0]["status"] == "running"
    runtime("kill", "c1")  # SIGTERM by default
    assert wait_for(lambda: runtime.state("c1")["status"] == "stopped")
    assert "got-term" in (tmp_path / "out").read_text()
    assert runtime.state("c1")["pid"] == 0
    runtime("delete", "c1")
    assert_nothing_left(runtime, bundle, busybox_rootfs)


def test_run_waits_and_returns_the_exit_status(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    done = runtime("run", "--bundle", tmp_path / "b", "r1", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert_nothing_left(runtime, tmp_path / "b", busybox_rootfs)  # run deletes the container afterwards


def test_run_killed_by_signal_exits_128_plus_signal(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo up; sleep 100"])
    proc = subprocess.Popen(runtime.command("run", "-b", tmp_path / "b", "r2"), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    runtime("kill", "r2", "KILL")
    assert proc.wait(10) == 137


def test_run_forwards_signals_to_the_container(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    proc = subprocess.Popen(runtime.command("run", "--bundle", tmp_path / "b", "fw"), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "started\n"
    proc.terminate()
    assert proc.wait(10) == 7
    assert proc.stdout.read() == "got-term\n"


def test_run_detached_and_keep(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("run", "-d", "--bundle", tmp_path / "b", "--pid-file", tmp_path / "pid", "det")
    assert runtime.state("det")["status"] == "running"
    runtime("delete", "--force", "det")
    assert_nothing_left(runtime, tmp_path / "b", busybox_rootfs)
    make_bundle(tmp_path / "k", busybox_rootfs, ["true"])
    runtime("run", "--keep", "--bundle", tmp_path / "k", "kept")
    assert runtime.state("kept")["status"] == "stopped"
    runtime("delete", "kept")


def test_container_gets_only_stdio_and_preserved_fds(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo $(ls /proc/self/fd); cat <&3; cat <&4"])
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()
    os.write(w3, b"three\n")
    os.write(w4, b"four\n")
    os.close(w3)
    os.close(w4)
    stray = os.open("/dev/null", os.O_RDONLY)  # an inherited fd that must not leak in
    os.set_inheritable(stray, True)
    script = (f"import os,subprocess,sys; os.dup2({r3},3); os.dup2({r4},4); "
              f"sys.exit(subprocess.run(sys.argv[1:], pass_fds=(3,4,{stray})).returncode)")
    argv = runtime.command("run", "--preserve-fds", "2", "--bundle", tmp_path / "b", "fds")
    done = subprocess.run(["python3", "-c", script] + argv, capture_output=True, text=True, timeout=30,
                          pass_fds=(r3, r4, stray))
    os.close(r3)
    os.close(r4)
    os.close(stray)
    assert done.returncode == 0, done.stderr
    listed, three, four = done.stdout.split("\n")[:3]
    # ls itself opens one fd for the directory it lists (the next free number, 5)
    assert listed.split() == ["0", "1", "2", "3", "4", "5"]
    assert (three.split()[-1], four) == ("three", "four")


def test_console_socket_receives_the_pty_master(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "tty; test -t 0 && test -t 1 && echo is-a-tty"],
                **{"process.terminal": True, "process.consoleSize": {"height": 30, "width": 100}})
    sock_path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    runtime("create", "--bundle", tmp_path / "b", "--console-socket", sock_path, "tty1")
    conn, _ = server.accept()
    payload, ancillary, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(4))
    assert payload == b"/dev/ptmx"
    (level, kind, data), = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    master = struct.unpack("i", data[:4])[0]
    import fcntl
    import termios
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(master, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    assert (rows, cols) == (30, 100)
    runtime("start", "tty1")
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the container closed the slave
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert b"/dev/pts/0" in output and b"is-a-tty" in output
    assert wait_for(lambda: runtime.state("tty1")["status"] == "stopped")
    runtime("delete", "tty1")


def test_run_with_terminal_and_no_socket_relays_the_pty(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "test -t 1 && echo relayed-tty; exit 5"],
                **{"process.terminal": True})
    done = runtime("run", "--bundle", tmp_path / "b", "tty2", check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 5
    assert "relayed-tty" in done.stdout
    done = runtime("run", "-d", "--bundle", tmp_path / "b", "tty3", check=False)
    assert done.returncode != 0 and "console-socket" in done.stderr
    assert runtime.ids() == []


def test_state_survives_pid_reuse(runtime, tmp_path, busybox_rootfs):
    """The init's start time is recorded: a different process with the same pid is not the container."""
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("run", "-d", "--bundle", tmp_path / "b", "reuse")
    state_file = os.path.join(runtime.root, "reuse", "state.json")
    with open(state_file) as f:
        saved = json.load(f)
    assert runtime.state("reuse")["status"] == "running"
    # what a reused pid looks like: same number, another start time
    with open(state_file, "w") as f:
        json.dump(dict(saved, start_time=saved["start_time"] + 1), f)
    assert runtime.state("reuse")["status"] == "stopped"
    with open(state_file, "w") as f:
        json.dump(saved, f)
    runtime("delete", "-f", "reuse")


def test_config_copy_is_kept_at_create_time(runtime, tmp_path, busybox_rootfs):
    config = make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("create", "--bundle", tmp_path / "b", "copy")
    (tmp_path / "b" / "config.json").write_text("{}")
    with open(os.path.join(runtime.root, "copy", "config.json")) as f:
        assert json.load(f)["process"]["args"] == config["process"]["args"]
    runtime("delete", "copy")  # a created container is deleted without --force, as runc does
    assert runtime.ids() == []
