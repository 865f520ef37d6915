"""exec, ps, pause/resume, update and events on real running containers."""
import json
import os
import socket
import time

import pytest

from runtime_helpers import cgroup_dirs, make_bundle, processes_in, read_pty, receive_pty_master

pytestmark = pytest.mark.root

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"]


@pytest.fixture
def running(runtime, tmp_path, busybox_rootfs):
    """A running busybox container 'box'; deleted afterwards."""
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP, **{"process.env": ["PATH=/bin:/usr/bin", "BASE=1"]})
    runtime("run", "-d", "--bundle", tmp_path / "b", "box")
    yield runtime.state("box")
    runtime("delete", "--force", "box", check=False)


def test_exec_joins_the_container(runtime, running):
    init_pid = running["pid"]
    done = runtime("exec", "box", "sh", "-c", "echo $BASE; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; cat /etc/crate-image")
    assert done.returncode == 0
    base, pid_ns, mnt_ns, marker = done.stdout.split()
    assert base == "1" and marker == "amd64"
    assert pid_ns == os.readlink(f"/proc/{init_pid}/ns/pid") and mnt_ns == os.readlink(f"/proc/{init_pid}/ns/mnt")
    assert runtime("exec", "box", "sh", "-c", "exit 6", check=False).returncode == 6


def test_exec_options_and_process_file(runtime, running, tmp_path):
    done = runtime("exec", "-e", "X=1", "--env=Y=2", "--cwd", "/tmp", "--user", "1000:1000", "box",
                   "sh", "-c", "echo $X $Y $(pwd) $(id -u):$(id -g)")
    assert done.stdout == "1 2 /tmp 1000:1000\n"
    process = {"args": ["sh", "-c", "echo from-file $(id -u) $Z"], "cwd": "/", "env": ["PATH=/bin", "Z=zed"],
               "user": {"uid": 1000, "gid": 1000}}
    (tmp_path / "process.json").write_text(json.dumps(process))
    done = runtime("exec", "--process", tmp_path / "process.json", "box")
    assert done.stdout == "from-file 1000 zed\n"


def test_exec_detached_writes_the_pid_file_and_is_in_the_cgroup(runtime, running, tmp_path):
    runtime("exec", "--detach", "--pid-file", tmp_path / "pid", "box", "sleep", "30")
    pid = int((tmp_path / "pid").read_text())
    with open(f"/proc/{pid}/cgroup") as f:
        exec_cgroups = f.read()
    with open(f"/proc/{running['pid']}/cgroup") as f:
        assert exec_cgroups == f.read()
    assert pid in json.loads(runtime("ps", "--format", "json", "box").stdout)
    table = runtime("ps", "box").stdout.splitlines()
    assert "PID" in table[0] and any("sleep 30" in line for line in table[1:])


def test_exec_with_console_socket(runtime, running, tmp_path):
    sock_path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    runtime("exec", "--detach", "--tty", "--console-socket", sock_path, "box", "sh", "-c", "tty; echo exec-tty")
    master = receive_pty_master(server)
    output = read_pty(master)
    assert b"/dev/pts/" in output and b"exec-tty" in output


def test_exec_errors(runtime, running, tmp_path):
    for argv, expected in [(["nope", "true"], "does not exist"), (["box"], "needs a command"),
                           (["box", "no-such-binary"], "executable file not found"),
                           (["--user", "root", "box", "true"], "invalid --user"),
                           (["--process", tmp_path / "missing.json", "box"], "does not exist")]:
        done = runtime("exec", *argv, check=False)
        assert done.returncode != 0 and expected in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text('{"args": "sh", "cwd": "/"}')
    done = runtime("exec", "--process", tmp_path / "bad.json", "box", check=False)
    assert done.returncode != 0 and "$.process.args" in done.stderr
    assert runtime.state("box")["status"] == "running"


def test_pause_and_resume(runtime, running):
    runtime("pause", "box")
    assert runtime.state("box")["status"] == "paused"
    with open(f"/proc/{running['pid']}/status") as f:
        assert "State:\tD" in f.read()  # a frozen task waits uninterruptibly in the freezer
    done = runtime("exec", "box", "true", check=False)
    assert done.returncode != 0 and "paused" in done.stderr
    assert runtime("pause", "box", check=False).returncode != 0
    runtime("resume", "box")
    assert runtime.state("box")["status"] == "running"
    assert runtime("resume", "box", check=False).returncode != 0
    runtime("pause", "box")
    runtime("kill", "box", "KILL")  # a paused container still dies on SIGKILL
    deadline = time.monotonic() + 10
    while runtime.state("box")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.state("box")["status"] == "stopped"


def test_update_and_events(runtime, running, tmp_path):
    runtime("update", "--memory", "64M", "--pids-limit", "77", "box")
    memory = next(d for d in cgroup_dirs(tmp_path / "b") if "/memory/" in d)
    pids = next(d for d in cgroup_dirs(tmp_path / "b") if "/pids/" in d)
    assert open(f"{memory}/memory.limit_in_bytes").read().strip() == str(64 << 20)
    assert open(f"{pids}/pids.max").read().strip() == "77"
    (tmp_path / "r.json").write_text(json.dumps({"pids": {"limit": 88}}))
    runtime("update", "-r", tmp_path / "r.json", "box")
    assert open(f"{pids}/pids.max").read().strip() == "88"
    done = runtime("update", "--memory", "lots", "box", check=False)
    assert done.returncode != 0 and "invalid --memory" in done.stderr
    event = json.loads(runtime("events", "--stats", "box").stdout)
    assert event["type"] == "stats" and event["id"] == "box"
    assert event["data"]["pids"]["current"] >= 1 and event["data"]["memory"]["usage"]["usage"] > 0


def test_exec_in_a_rootless_container(user_runtime, shared_tmp, busybox_rootfs, request):
    path = os.path.join(shared_tmp, f"rl-exec-{request.node.name}")
    make_bundle(path, busybox_rootfs, LOOP, rootless=True, user=user_runtime.user)
    user_runtime("run", "-d", "--bundle", path, "rlx")
    try:
        done = user_runtime("exec", "rlx", "sh", "-c", "id -u; cat /proc/self/uid_map")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == "0"
    finally:
        user_runtime("delete", "--force", "rlx")
    assert processes_in(busybox_rootfs) == []
