"""Detached containers and their monitor: logs (-f, --tail, json-file), stop (StopSignal, then
SIGKILL), kill, start/restart, rm, names and id prefixes, exec, concurrency; as root."""
import concurrent.futures
import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.registry]

LOOP = "trap 'echo term; exit 0' TERM; while :; do sleep 0.1; done"


def wait_status(crate, name, wanted, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        info = crate.inspect(name)
        if info["State"]["Status"] == wanted:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {info['State']['Status']}, not {wanted}, after {timeout}s")
        time.sleep(0.05)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] not in "ZX"
    except OSError:
        return False


@pytest.fixture
def image(crate, crate_images):
    crate("pull", "-q", crate_images["busybox"])
    return crate_images["busybox"]


def test_detached_run_returns_the_id_and_logs_follow(crate, image):
    started = time.monotonic()
    done = crate("run", "-d", "--name", "talker", image, "sh", "-c",
                 "for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; sleep 0.2; done; exit 4")
    cid = done.stdout.strip()
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    assert time.monotonic() - started < 5  # did not wait for the container
    info = crate.inspect("talker")
    assert info["State"]["Status"] == "running" and alive(info["State"]["Pid"])
    assert alive(info["State"]["MonitorPid"])
    follow = crate.popen("logs", "-f", "talker", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = follow.communicate(timeout=30)  # -f ends when the container does
    assert follow.returncode == 0
    assert out == "".join(f"out {i}\n" for i in range(1, 6))
    assert err == "".join(f"err {i}\n" for i in range(1, 6))
    info = wait_status(crate, "talker", "exited")
    assert info["State"]["ExitCode"] == 4 and info["State"]["FinishedAt"] > info["State"]["StartedAt"]
    assert not alive(info["State"]["MonitorPid"]) or wait_gone(info["State"]["MonitorPid"])
    # docker's json-file format
    with open(info["LogPath"]) as f:
        entries = [json.loads(line) for line in f]
    assert {tuple(sorted(e)) for e in entries} == {("log", "stream", "time")}
    assert [e["log"] for e in entries if e["stream"] == "stdout"] == [f"out {i}\n" for i in range(1, 6)]
    assert all(e["time"].endswith("Z") and len(e["time"]) == 30 for e in entries)
    tail = crate("logs", "--tail", "2", "talker")
    assert tail.stdout + tail.stderr in ("out 5\nerr 5\n", "err 5\nout 5\n")
    stamped = crate("logs", "-t", "--tail", "1", "talker")
    assert (stamped.stdout + stamped.stderr).split(" ", 1)[0] == entries[-1]["time"]


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stop_escalates_to_sigkill_after_the_timeout(crate, image):
    crate("run", "-d", "--name", "stubborn", image, "sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done")
    pid = crate.inspect("stubborn")["State"]["Pid"]
    started = time.monotonic()
    crate("stop", "-t", "1", "stubborn")
    took = time.monotonic() - started
    assert 1 <= took < 8
    info = crate.inspect("stubborn")
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    assert not alive(pid)
    # a container that honours the signal stops at once with its own status
    crate("run", "-d", "--name", "polite", image, "sh", "-c", LOOP)
    started = time.monotonic()
    assert crate("stop", "polite").stdout == "polite\n"
    assert time.monotonic() - started < 5
    assert crate.inspect("polite")["State"]["ExitCode"] == 0
    assert crate("logs", "polite").stdout == "term\n"
    # stopping a stopped container is not an error (as docker); -t 0 is SIGKILL at once
    crate("stop", "polite")
    crate("start", "polite")
    crate("stop", "-t", "0", "polite")
    assert crate.inspect("polite")["State"]["ExitCode"] == 137


def test_stop_sends_the_images_stop_signal(crate, crate_images):
    crate("run", "-d", "--name", "quitter", "--entrypoint", "sh", crate_images["config"], "-c",
          "trap 'echo quit; exit 7' QUIT; trap 'echo term; exit 8' TERM; while :; do sleep 0.1; done")
    crate("stop", "quitter")
    assert crate.inspect("quitter")["State"]["ExitCode"] == 7
    assert crate("logs", "quitter").stdout == "quit\n"


def test_kill(crate, image):
    crate("run", "-d", "--name", "target", image, "sh", "-c",
          "trap 'echo usr1' USR1; echo ready; while :; do sleep 0.1; done")
    crate("kill", "-s", "USR1", "target")
    deadline = time.monotonic() + 10
    while "usr1" not in crate("logs", "target").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert crate("logs", "target").stdout == "ready\nusr1\n"
    assert crate.inspect("target")["State"]["Status"] == "running"
    crate("kill", "target")  # SIGKILL by default
    info = wait_status(crate, "target", "exited")
    assert info["State"]["ExitCode"] == 137
    done = crate("kill", "target", check=False)
    assert done.returncode == 1 and done.stderr == "crate: container target is not running; start it first " \
                                                  "(crate start target)\n"


def test_create_start_and_restart(crate, image):
    cid = crate("create", "--name", "later", image, "sh", "-c", "echo run; cat /count 2>/dev/null; "
                "echo x >> /count; " + LOOP).stdout.strip()
    info = crate.inspect("later")
    assert info["Id"] == cid and info["State"]["Status"] == "created" and info["State"]["Pid"] == 0
    assert "later" in crate("ps", "-a").stdout and "later" not in crate("ps").stdout
    assert "Created" in crate("ps", "-a").stdout
    assert crate("start", "later").stdout == "later\n"
    assert crate.inspect("later")["State"]["Status"] == "running"
    assert crate("start", "later").stdout == "later\n"  # already running: nothing to do
    crate("stop", "later")
    crate("start", cid[:10])
    crate("stop", "later")
    # the same root filesystem across runs (its changes kept), the log appended
    assert crate("logs", "later").stdout == "run\nterm\nrun\nx\nterm\n"


def test_rm(crate, image):
    crate("run", "-d", "--name", "busy", image, "sh", "-c", LOOP)
    info = crate.inspect("busy")
    done = crate("rm", "busy", check=False)
    assert done.returncode == 1
    assert done.stderr == "crate: container busy is running; stop it first (crate stop busy) or use crate rm -f\n"
    assert crate.inspect("busy")["State"]["Status"] == "running"
    assert crate("rm", "-f", "busy").stdout == "busy\n"
    assert not alive(info["State"]["Pid"]) and wait_gone(info["State"]["MonitorPid"])
    assert crate.container_dirs() == [] and crate.mounts() == []
    assert subprocess.run(["crate-runc", "--root", info["RuntimeRoot"], "state", info["Id"]],
                          capture_output=True).returncode != 0
    assert not os.path.exists(info["BundlePath"])


def test_detached_rm_flag_removes_after_exit(crate, image):
    crate("run", "-d", "--rm", "--name", "brief", image, "sh", "-c", "sleep 0.3")
    deadline = time.monotonic() + 20
    while crate.container_dirs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert crate.container_dirs() == [] and crate.mounts() == []
    assert crate("ps", "-a", "-q").stdout == ""


def test_detached_interactive_keeps_stdin_open(crate, image):
    """-di: the monitor holds the container's stdin open, so `sh` waits instead of ending."""
    crate("run", "-d", "-i", "--name", "shell", image, "sh")
    time.sleep(0.5)
    assert crate.inspect("shell")["State"]["Status"] == "running"
    crate("run", "-d", "--name", "noinput", image, "sh")
    wait_status(crate, "noinput", "exited")
    crate("rm", "-f", "shell")


def test_names_ids_and_prefixes(crate, image):
    ids = [crate("create", image, "true").stdout.strip() for _ in range(17)]
    names = [crate.inspect(i)["Name"] for i in ids]
    assert len(set(names)) == 17 and all("_" in n for n in names)  # generated, unique
    assert sorted(crate("ps", "-a", "-q", "--no-trunc").stdout.split()) == sorted(ids)
    # 17 ids over 16 hex digits: two of them share a first digit (pigeonhole)
    first = [i[0] for i in ids]
    shared = next(d for d in first if first.count(d) > 1)
    done = crate("start", shared, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(f"crate: id prefix '{shared}' matches {first.count(shared)} containers (")
    assert done.stderr.endswith("; give more characters of the id, or the name\n")
    unique = next(i for i in ids if first.count(i[0]) == 1) if any(first.count(d) == 1 for d in first) else None
    if unique:
        assert crate.inspect(unique[0])["Id"] == unique
    assert crate.inspect(ids[0][:12])["Id"] == ids[0]
    assert crate.inspect(names[3])["Id"] == ids[3]
    # a name wins over an id prefix; a taken name is refused and nothing is made
    before = crate.container_dirs()
    done = crate("create", "--name", names[0], image, "true", check=False)
    assert done.returncode == 125
    assert done.stderr == f"crate: the name '{names[0]}' is already in use by container {ids[0][:12]}; " \
                          f"remove it (`crate rm {names[0]}`) or choose another name\n"
    assert crate.container_dirs() == before
    crate("rm", *ids)
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_concurrent_creates_of_one_name(crate, image):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: crate("create", "--name", "only", image, "true", check=False), range(8)))
    won = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert len(won) == 1 and len(lost) == 7
    assert all("is already in use" in r.stderr for r in lost)
    assert crate.container_dirs() == [won[0].stdout.strip()]
    assert len(crate.mounts()) == 1  # the winner's rootfs only


def test_concurrent_runs_and_removals(crate, image):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(lambda n: crate("run", "-d", "--name", f"c{n}", image, "sh", "-c", LOOP).stdout.strip(),
                            range(6)))
    assert len(set(ids)) == 6
    assert len(crate("ps", "-q").stdout.split()) == 6
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        # stop and rm -f race each other on every container
        list(pool.map(lambda n: crate("stop", "-t", "5", f"c{n}", check=False), range(6)))
        list(pool.map(lambda n: crate("rm", "-f", f"c{n}"), range(6)))
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_exec(crate, image, pty_session):
    crate("run", "-d", "--name", "host", "-e", "BASE=1", image, "sh", "-c", LOOP)
    done = crate("exec", "-e", "X=2", "-w", "/tmp", "-u", "crate", "host", "sh", "-c",
                 "echo $BASE $X $(pwd) $(id -un):$(id -g) $HOME; exit 3", check=False)
    assert (done.returncode, done.stdout) == (3, "1 2 /tmp crate:1000 /home/crate\n")
    assert crate("exec", "-i", "host", "cat", input="piped\n").stdout == "piped\n"
    assert crate("exec", "host", "ls", "-d", "/proc/1").stdout == "/proc/1\n"  # options go to the command
    missing = crate("exec", "host", "nosuch", check=False)
    assert missing.returncode == 127 and missing.stderr.startswith("crate: cannot exec: ")
    assert len(missing.stderr.splitlines()) == 1
    session = pty_session(crate.command("exec", "-it", "host", "sh"), rows=30, cols=90)
    session.expect(b"# ")
    session.send(b"stty size; tty; exit 9\r")
    session.expect(b"30 90")
    assert session.wait() == 9
    crate("stop", "host")
    done = crate("exec", "host", "true", check=False)
    assert done.returncode == 1 and done.stderr == "crate: container host is not running; start it first " \
                                                  "(crate start host)\n"


def test_monitor_killed_the_container_is_still_managed(crate, image):
    """With its monitor gone (SIGKILL), a container still shows as running and can be stopped;
    its record then says exited with an unknown status, and rm cleans up."""
    crate("run", "-d", "--name", "orphan", image, "sh", "-c", LOOP)
    info = crate.inspect("orphan")
    os.kill(info["State"]["MonitorPid"], signal.SIGKILL)
    assert wait_gone(info["State"]["MonitorPid"])
    assert crate.inspect("orphan")["State"]["Status"] == "running"
    crate("stop", "orphan")
    state = crate.inspect("orphan")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] is None and "monitor died" in state["Error"]
    assert "Exited (?)" in crate("ps", "-a").stdout
    assert not alive(info["State"]["Pid"])
    crate("rm", "orphan")
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_ps_formats(crate, image):
    cid = crate("run", "-d", "--name", "listed", image, "sh", "-c", LOOP).stdout.strip()
    table = crate("ps").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    assert table[1].startswith(cid[:12]) and table[1].endswith("listed") and "Up " in table[1]
    (row,) = [json.loads(line) for line in crate("ps", "--format", "json").stdout.splitlines()]
    assert row["ID"] == cid[:12] and row["Names"] == "listed" and row["State"] == "running"
    assert row["Status"].startswith("Up ")
    assert crate("ps", "-q", "--no-trunc").stdout == cid + "\n"


def test_start_replaces_runtime_state_left_behind(crate, image):
    """Runtime state under crate's id that no monitor owns (a monitor killed mid-create, say):
    start deletes it and creates the container afresh."""
    cid = crate("create", "--name", "left", image, "sh", "-c", "echo fresh; " + LOOP).stdout.strip()
    info = crate.inspect("left")
    subprocess.run(["crate-runc", "--root", info["RuntimeRoot"], "create", "--bundle", info["BundlePath"],
                    "--pid-file", os.path.join(os.path.dirname(info["LogPath"]), "stale.pid"), cid],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(os.path.dirname(info["LogPath"]), "stale.pid")) as f:
        stale = int(f.read())
    assert alive(stale)
    crate("start", "left")
    info = crate.inspect("left")
    assert info["State"]["Status"] == "running" and info["State"]["Pid"] != stale
    assert wait_gone(stale)
    deadline = time.monotonic() + 10
    while crate("logs", "left").stdout != "fresh\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert crate("logs", "left").stdout == "fresh\n"
    crate("rm", "-f", "left")
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_rmi_while_a_container_uses_the_image(crate, busybox_refs):
    """An image a container uses keeps its last name (unless -f); a second name of it may go."""
    crate("pull", "-q", busybox_refs["latest"])
    crate("pull", "-q", busybox_refs["v2s2"])  # the same amd64 image under another tag
    ids = crate("images", "-q").stdout.split()
    assert len(ids) == 1
    crate("create", "--name", "user", busybox_refs["latest"], "true")
    assert crate("rmi", busybox_refs["v2s2"]).stdout == f"Untagged: {busybox_refs['v2s2']}\n"
    done = crate("rmi", busybox_refs["latest"], check=False)
    assert done.returncode == 1
    assert done.stderr == f"crate: image {busybox_refs['latest']} is used by container " \
                          f"{crate.inspect('user')['Id'][:12]} (user); remove the container first (crate rm user) " \
                          f"or use rmi -f\n"
    assert crate("rmi", "-f", busybox_refs["latest"]).stdout == f"Untagged: {busybox_refs['latest']}\n"
    assert crate("images", "-q").stdout == ""
    # its files stay with the container's bundle: it still runs
    crate("start", "user")
    deadline = time.monotonic() + 10
    while crate.inspect("user")["State"]["Status"] != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert crate.inspect("user")["State"]["ExitCode"] == 0
