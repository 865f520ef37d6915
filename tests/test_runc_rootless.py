"""crate-runc as an unprivileged user: `spec --rootless` bundles, configs without a user namespace,
id ranges through newuidmap/newgidmap, and the lifecycle leaving nothing behind."""
import json
import os
import pwd
import time

import pytest

from runtime_helpers import make_bundle, processes_in, read_pty, receive_pty_master

pytestmark = pytest.mark.userns


def owner(runtime):
    return runtime.user or pwd.getpwuid(os.geteuid()).pw_name


def user_ids(runtime):
    entry = pwd.getpwnam(owner(runtime))
    return entry.pw_uid, entry.pw_gid


def bundle_for(runtime, path, rootfs, args, rootless=True, **changes):
    return make_bundle(path, rootfs, args, rootless=rootless, user=runtime.user, **changes)


def subid_range(kind, name):
    try:
        with open(f"/etc/sub{kind}") as f:
            for line in f:
                user, start, count = line.strip().split(":")
                if user == name:
                    return int(start), int(count)
    except (OSError, ValueError):
        pass
    return None


def test_spec_rootless_bundle_runs_with_no_setup(user_runtime, shared_tmp, busybox_rootfs, request):
    uid, gid = user_ids(user_runtime)
    path = os.path.join(shared_tmp, f"rl-spec-{request.node.name}")
    config = bundle_for(user_runtime, path, busybox_rootfs,
                        ["sh", "-c", "id -u; cat /proc/self/uid_map; hostname; touch /tmp/x 2>&1 | head -1"])
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": uid, "size": 1}]
    done = user_runtime("run", "--bundle", path, "rl1", check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(uid), "1"]
    assert lines[2] == "crate"
    assert user_runtime.ids() == []


def test_config_without_user_namespace_gets_one(user_runtime, shared_tmp, busybox_rootfs, request):
    """As crun does: rootless and no user namespace in config.json -> the runtime makes one."""
    uid, _ = user_ids(user_runtime)
    path = os.path.join(shared_tmp, f"rl-auto-{request.node.name}")
    # a root-style config (network namespace, sysfs, devpts gid=5, device rules), minus cgroupsPath
    bundle_for(user_runtime, path, busybox_rootfs, ["sh", "-c", "id -u; cat /proc/self/uid_map; ls /dev/null"],
               rootless=False, **{"linux.cgroupsPath": None, "linux.resources": None})
    done = user_runtime("run", "--bundle", path, "rl2", check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", str(uid), "1", "/dev/null"]


def test_id_ranges_through_newuidmap(user_runtime, shared_tmp, busybox_rootfs, request):
    name = owner(user_runtime)
    uid, gid = user_ids(user_runtime)
    uids, gids = subid_range("uid", name), subid_range("gid", name)
    if not (uids and gids):
        pytest.skip(f"no /etc/subuid and /etc/subgid ranges for {name}")
    uid_maps = [{"containerID": 0, "hostID": uid, "size": 1}, {"containerID": 1, "hostID": uids[0], "size": 65536}]
    gid_maps = [{"containerID": 0, "hostID": gid, "size": 1}, {"containerID": 1, "hostID": gids[0], "size": 65536}]
    path = os.path.join(shared_tmp, f"rl-range-{request.node.name}")
    bundle_for(user_runtime, path, busybox_rootfs, ["sh", "-c", "cat /proc/self/uid_map; id -u; id -g"],
               **{"linux.uidMappings": uid_maps, "linux.gidMappings": gid_maps,
                  "process.user": {"uid": 1000, "gid": 1000}})
    done = user_runtime("run", "--bundle", path, "rl3", check=False)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0] == ["0", str(uid), "1"] and lines[1] == ["1", str(uids[0]), "65536"]
    assert lines[2:] == [["1000"], ["1000"]]


def test_rootless_lifecycle_leaves_nothing(user_runtime, shared_tmp, busybox_rootfs, request):
    path = os.path.join(shared_tmp, f"rl-life-{request.node.name}")
    bundle_for(user_runtime, path, busybox_rootfs, ["sh", "-c", "while :; do sleep 0.05; done"])
    pid_file = os.path.join(user_runtime.root, "pid")
    user_runtime("create", "--bundle", path, "--pid-file", pid_file, "rl4")
    state = user_runtime.state("rl4")
    assert state["status"] == "created" and state["pid"] == int(open(pid_file).read())
    with open(f"/proc/{state['pid']}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(user_ids(user_runtime)[0])  # root inside, the user outside
    user_runtime("start", "rl4")
    assert user_runtime.state("rl4")["status"] == "running"
    user_runtime("kill", "rl4", "KILL")
    deadline = time.monotonic() + 10
    while user_runtime.state("rl4")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    user_runtime("delete", "rl4")
    assert user_runtime.ids() == []
    assert not os.path.exists(os.path.join(user_runtime.root, "rl4"))
    assert processes_in(busybox_rootfs) == []


def test_rootless_errors_are_one_line_and_leave_nothing(user_runtime, shared_tmp, busybox_rootfs, request):
    path = os.path.join(shared_tmp, f"rl-err-{request.node.name}")
    bundle_for(user_runtime, path, busybox_rootfs, ["no-such-binary"])
    done = user_runtime("create", "--bundle", path, "rl5", check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "executable file not found" in done.stderr
    assert user_runtime.ids() == [] and not os.path.exists(os.path.join(user_runtime.root, "rl5"))
    assert processes_in(busybox_rootfs) == []


def test_rootless_config_features(user_runtime, shared_tmp, busybox_rootfs, request):
    """process, hostname, mounts, masked/read-only paths, rlimits and hooks as an unprivileged user."""
    path = os.path.join(shared_tmp, f"rl-features-{request.node.name}")
    hooks_dir = os.path.join(shared_tmp, f"rl-hooks-{request.node.name}")
    os.makedirs(hooks_dir)
    uid, gid = user_ids(user_runtime)
    os.chown(hooks_dir, uid, gid)
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {hooks_dir}/$PHASE.json"]}
    script = ("echo \"$FOO|$(pwd)|$(hostname)|$(ulimit -n)\"; touch / 2>/dev/null || echo ro-root;"
              " cat /home/note; wc -c < /proc/keys; echo x > /proc/sys/kernel/hostname 2>/dev/null || echo sys-ro")
    note = os.path.join(shared_tmp, f"rl-note-{request.node.name}")
    os.makedirs(note)
    with open(os.path.join(note, "note"), "w") as f:
        f.write("bound\n")
    config = bundle_for(user_runtime, path, busybox_rootfs, ["sh", "-c", script],
                        **{"process.env": ["PATH=/bin", "FOO=bar"], "process.cwd": "/tmp", "hostname": "rl-box",
                           "process.rlimits": [{"type": "RLIMIT_NOFILE", "soft": 256, "hard": 256}],
                           "linux.maskedPaths": ["/proc/keys"],
                           "hooks": {"prestart": [dict(hook, env=["PHASE=prestart"])],
                                     "poststop": [dict(hook, env=["PHASE=poststop"])]}})
    config["mounts"].append({"destination": "/home", "type": "bind", "source": note, "options": ["rbind", "ro"]})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    done = user_runtime("run", "--bundle", path, "rl6", check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["bar|/tmp|rl-box|256", "ro-root", "bound", "0", "sys-ro"]
    for phase, status in (("prestart", "creating"), ("poststop", "stopped")):
        with open(os.path.join(hooks_dir, f"{phase}.json")) as f:
            assert json.load(f)["status"] == status


def test_rootless_console_socket_and_fds(user_runtime, shared_tmp, busybox_rootfs, request):
    import socket
    uid, gid = user_ids(user_runtime)
    path = os.path.join(shared_tmp, f"rl-tty-{request.node.name}")
    bundle_for(user_runtime, path, busybox_rootfs, ["sh", "-c", "tty; ls /proc/self/fd | wc -l"],
               **{"process.terminal": True})
    sock_path = os.path.join(shared_tmp, f"rl-console-{os.getpid()}.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    os.chown(sock_path, uid, gid)
    server.listen(1)
    user_runtime("create", "--bundle", path, "--console-socket", sock_path, "rl7")
    master = receive_pty_master(server)
    user_runtime("start", "rl7")
    output = read_pty(master)
    lines = output.decode().split()
    assert lines[0].startswith("/dev/pts/") and lines[1] == "4"  # 0-2 and the fd ls opens for the listing
    deadline = time.monotonic() + 10
    while user_runtime.state("rl7")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    user_runtime("delete", "rl7")
