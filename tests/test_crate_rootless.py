"""crate as an unprivileged user (the test user when the suite runs as root): images and
containers in the user's store, rootfs copies in a user namespace mapping the subordinate ids,
crate-runc rootless (and runc), the monitor and logs, a terminal, and clean removal."""
import json
import os
import time

import pytest

pytestmark = [pytest.mark.userns, pytest.mark.registry]

LOOP = "trap 'echo term; exit 0' TERM; while :; do sleep 0.1; done"


def owner_ids(cli):
    import pwd
    entry = pwd.getpwnam(cli.user) if cli.user else pwd.getpwuid(os.geteuid())
    return entry.pw_uid, entry.pw_gid


def subuid_start(name):
    with open("/etc/subuid") as f:
        for line in f:
            user, start, _ = line.strip().split(":")
            if user == name:
                return int(start)
    return None


def test_rootless_run(user_crate, crate_images):
    uid, _ = owner_ids(user_crate)
    done = user_crate("run", "--rm", crate_images["busybox"], "sh", "-c",
                      "id -u; cat /proc/self/uid_map; ls -ln /home | grep crate; echo err >&2; exit 6", check=False)
    assert done.returncode == 6, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(uid), "1"]
    # the image's uid 1000 kept its owner: it is the user's subordinate uid 999 on the host
    assert lines[-1].split()[2:4] == ["1000", "1000"]
    assert done.stderr.splitlines()[-1] == "err"
    assert user_crate.container_dirs() == []
    # everything is in the user's own store
    assert os.stat(os.path.join(user_crate.root, "containers")).st_uid == uid


def test_rootless_detached_lifecycle(user_crate, crate_images):
    image = crate_images["busybox"]
    cid = user_crate("run", "-d", "--name", "svc", image, "sh", "-c", "echo started; " + LOOP).stdout.strip()
    info = user_crate.inspect("svc")
    assert info["Id"] == cid and info["State"]["Status"] == "running"
    assert info["Rootfs"] == {"Mode": "copy", "Rootless": True}
    assert info["RuntimeRoot"].startswith(user_crate.runtime_dir)
    done = user_crate("exec", "-u", "crate", "svc", "sh", "-c", "id -u; echo $HOME")
    assert done.stdout == "1000\n/home/crate\n"
    # -u crate: the container's uid 1000 is the user's first subordinate uid + 999 on the host
    import pwd
    start = subuid_start(pwd.getpwuid(owner_ids(user_crate)[0]).pw_name)
    if start is not None:
        user_crate("run", "-d", "-u", "crate", "--name", "as-crate", image, "sleep", "30")
        with open(f"/proc/{user_crate.inspect('as-crate')['State']['Pid']}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == [str(start + 999)] * 4
        user_crate("rm", "-f", "as-crate")
    assert user_crate("ps", "-q").stdout == cid[:12] + "\n"
    user_crate("stop", "svc")
    assert user_crate("logs", "svc").stdout == "started\nterm\n"
    assert user_crate.inspect("svc")["State"]["ExitCode"] == 0
    user_crate("start", "svc")
    assert user_crate.inspect("svc")["State"]["Status"] == "running"
    user_crate("kill", "svc")
    deadline = time.monotonic() + 20
    while user_crate.inspect("svc")["State"]["Status"] != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert user_crate.inspect("svc")["State"]["ExitCode"] == 137
    user_crate("rm", "svc")
    # the bundle's files belonged to subordinate ids: crate removed them through the user namespace
    assert user_crate.container_dirs() == []


def test_rootless_stop_escalation_and_rm_force(user_crate, crate_images):
    user_crate("run", "-d", "--name", "stubborn", crate_images["busybox"], "sh", "-c",
               "trap '' TERM; while :; do sleep 0.1; done")
    started = time.monotonic()
    user_crate("stop", "-t", "1", "stubborn")
    assert 1 <= time.monotonic() - started < 8
    assert user_crate.inspect("stubborn")["State"]["ExitCode"] == 137
    user_crate("start", "stubborn")
    user_crate("rm", "-f", "stubborn")
    assert user_crate.container_dirs() == []


def test_rootless_terminal(user_crate, crate_images, pty_session):
    user_crate("pull", "-q", crate_images["busybox"])
    session = pty_session(user_crate.command("run", "-it", "--rm", crate_images["busybox"], "sh"), rows=25, cols=77)
    session.expect(b"# ")
    session.send(b"stty size; id -u; exit 2\r")
    session.expect(b"25 77")
    assert session.wait() == 2
    assert user_crate.container_dirs() == []


def test_rootless_with_runc(user_crate, crate_images):
    image = crate_images["busybox"]
    done = user_crate("run", "--rm", "--runtime", "runc", image, "sh", "-c", "id -u; exit 3", check=False)
    assert (done.returncode, done.stdout) == (3, "0\n"), done.stderr
    user_crate("run", "-d", "--runtime", "runc", "--name", "r", image, "sh", "-c", LOOP)
    assert user_crate("exec", "r", "echo", "in").stdout == "in\n"
    user_crate("stop", "r")
    assert user_crate("logs", "r").stdout == "term\n"
    user_crate("rm", "r")
    assert user_crate.container_dirs() == []


def test_rootless_images_and_rmi(user_crate, crate_images):
    user_crate("pull", crate_images["config"])
    rows = [json.loads(line) for line in user_crate("images", "--format", "json").stdout.splitlines()]
    assert [r["Tag"] for r in rows] == ["latest"] and rows[0]["Repository"].endswith("/library/config")
    user_crate("create", "--name", "user-of-it", crate_images["config"])
    done = user_crate("rmi", crate_images["config"], check=False)
    assert done.returncode == 1 and "is used by container" in done.stderr
    user_crate("rm", "user-of-it")
    assert user_crate("rmi", crate_images["config"]).stdout == f"Untagged: {crate_images['config']}\n"
    assert user_crate("images", "-q").stdout == ""
