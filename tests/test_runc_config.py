"""What config.json asks for is what the container gets, checked from inside real containers."""
import json
import os
import shutil
import subprocess

import pytest

from runtime_helpers import make_bundle, processes_in

pytestmark = pytest.mark.root


def run_in(runtime, tmp_path, rootfs, script, name="c", expect=0, **changes):
    """Run `sh -c script` in a fresh container; return its stdout."""
    bundle = tmp_path / name
    make_bundle(bundle, rootfs, ["sh", "-c", script], **changes)
    done = runtime("run", "--bundle", bundle, name, check=False)
    assert done.returncode == expect, done.stderr + done.stdout
    return done.stdout


@pytest.fixture
def writable_rootfs(tmp_path, busybox_rootfs):
    path = tmp_path / "rootfs-rw"
    shutil.copytree(busybox_rootfs, path, symlinks=True)
    return str(path)


def test_process_args_env_cwd_user_groups_umask(runtime, tmp_path, busybox_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, 'echo "$FOO|$(pwd)|$(id -u)|$(id -g)|$(id -G)|$(umask)|$HOME"',
                 **{"process.env": ["PATH=/bin:/usr/bin", "FOO=bar baz"], "process.cwd": "/tmp",
                    "process.user": {"uid": 1000, "gid": 1000, "additionalGids": [2000, 65534], "umask": 0o027}})
    assert out == "bar baz|/tmp|1000|1000|1000 2000 65534|0027|/home/crate\n"


def test_home_comes_from_the_env_or_the_image_passwd(runtime, tmp_path, busybox_rootfs):
    assert run_in(runtime, tmp_path, busybox_rootfs, "echo $HOME", name="a") == "/root\n"
    out = run_in(runtime, tmp_path, busybox_rootfs, "echo $HOME", name="b",
                 **{"process.env": ["PATH=/bin", "HOME=/elsewhere"]})
    assert out == "/elsewhere\n"


def test_rlimits_and_no_new_privileges(runtime, tmp_path, busybox_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, "ulimit -n; ulimit -Hn; grep NoNewPrivs /proc/self/status",
                 name="a", **{"process.rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
                              "process.noNewPrivileges": True})
    assert out.split() == ["100", "200", "NoNewPrivs:", "1"]
    out = run_in(runtime, tmp_path, busybox_rootfs, "grep NoNewPrivs /proc/self/status", name="b",
                 **{"process.noNewPrivileges": False})
    assert out.split() == ["NoNewPrivs:", "0"]


def test_oom_score_adj(runtime, tmp_path, busybox_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, "cat /proc/self/oom_score_adj", **{"process.oomScoreAdj": 500})
    assert out == "500\n"


def test_all_five_capability_sets(runtime, tmp_path, busybox_rootfs):
    caps = {"bounding": ["CAP_KILL", "CAP_NET_RAW", "CAP_CHOWN"], "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}
    out = run_in(runtime, tmp_path, busybox_rootfs, "grep ^Cap /proc/self/status",
                 **{"process.capabilities": caps, "process.user": {"uid": 1000, "gid": 1000}})
    got = {line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines()}
    kill, net_raw, chown = 1 << 5, 1 << 13, 1 << 0
    # a non-root user keeps only what is ambient (and inheritable) across its execve
    assert got == {"CapInh": kill, "CapPrm": kill, "CapEff": kill, "CapBnd": kill | net_raw | chown,
                   "CapAmb": kill}
    out = run_in(runtime, tmp_path, busybox_rootfs, "grep ^Cap /proc/self/status", name="root",
                 **{"process.capabilities": caps})
    got = {line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines()}
    assert got["CapEff"] == kill | chown and got["CapPrm"] == kill | chown and got["CapBnd"] == kill | net_raw | chown


def test_hostname_and_domainname(runtime, tmp_path, busybox_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, "hostname; cat /proc/sys/kernel/domainname",
                 **{"hostname": "box.example", "domainname": "crate.test"})
    assert out == "box.example\ncrate.test\n"
    assert os.uname().nodename != "box.example"


def test_readonly_root_and_writable_root(runtime, tmp_path, busybox_rootfs, writable_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, "touch /x 2>&1; echo rc=$?", name="ro")
    assert "Read-only file system" in out and "rc=1" in out
    run_in(runtime, tmp_path, writable_rootfs, "echo hi > /written", name="rw",
           **{"root": {"path": writable_rootfs, "readonly": False}})
    assert open(os.path.join(writable_rootfs, "written")).read() == "hi\n"


def test_bind_mounts_in_order_with_options(runtime, tmp_path, busybox_rootfs):
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "file.txt").write_text("from host\n")
    single = tmp_path / "single.txt"
    single.write_text("one file\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["mode=700", "size=1m"]},
        {"destination": "/data/ro", "type": "bind", "source": str(shared), "options": ["bind", "ro"]},
        {"destination": "/data/rw", "type": "bind", "source": str(out_dir), "options": ["rbind", "rw"]},
        {"destination": "/etc/single.txt", "type": "bind", "source": str(single), "options": ["bind", "ro"]},
    ]
    script = ("stat -c %a /data; cat /data/ro/file.txt; ls /data/ro; echo x > /data/ro/new 2>/dev/null || echo ro-refused;"
              " echo written > /data/rw/out.txt; cat /etc/single.txt; grep ' /data ' /proc/self/mountinfo | grep -c tmpfs")
    out = run_in(runtime, tmp_path, busybox_rootfs, script, **{"mounts": mounts})
    assert out.split("\n")[:7] == ["700", "from host", "file.txt", "sub", "ro-refused", "one file", "1"]
    assert (out_dir / "out.txt").read_text() == "written\n"
    assert not (shared / "new").exists()


def test_rbind_carries_submounts_and_bind_does_not(runtime, tmp_path, busybox_rootfs):
    source = tmp_path / "src"
    (source / "inner").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "crate-test-sub", str(source / "inner")], check=True)
    try:
        (source / "inner" / "marker").write_text("submount\n")
        mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
                  {"destination": "/r", "type": "bind", "source": str(source), "options": ["rbind"]},
                  {"destination": "/b", "type": "bind", "source": str(source), "options": ["bind"]}]
        out = run_in(runtime, tmp_path, busybox_rootfs,
                     "cat /r/inner/marker; ls /b/inner | wc -l", **{"mounts": mounts})
        assert out == "submount\n0\n"
    finally:
        subprocess.run(["umount", str(source / "inner")], check=True)


def test_mount_propagation_option(runtime, tmp_path, busybox_rootfs):
    source = tmp_path / "prop"
    source.mkdir()
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/shared", "type": "bind", "source": str(source), "options": ["rbind", "rshared"]},
              {"destination": "/private", "type": "bind", "source": str(source), "options": ["rbind", "rprivate"]}]
    out = run_in(runtime, tmp_path, busybox_rootfs,
                 "grep ' /shared ' /proc/self/mountinfo; grep ' /private ' /proc/self/mountinfo",
                 **{"mounts": mounts, "linux.rootfsPropagation": "private"})
    shared_line, private_line = out.splitlines()
    assert "shared:" in shared_line
    assert "shared:" not in private_line and "master:" not in private_line


def test_namespaces_new_and_joined_by_path(runtime, tmp_path, busybox_rootfs):
    loop = ["sh", "-c", "echo up; while :; do sleep 0.05; done"]
    make_bundle(tmp_path / "first", busybox_rootfs, loop)
    runtime("run", "-d", "--bundle", tmp_path / "first", "first")
    try:
        first_pid = runtime.state("first")["pid"]
        host = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "uts", "ipc", "pid", "mnt")}
        first = {ns: os.readlink(f"/proc/{first_pid}/ns/{ns}") for ns in host}
        assert all(first[ns] != host[ns] for ns in host)
        namespaces = [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                      {"type": "network", "path": f"/proc/{first_pid}/ns/net"},
                      {"type": "uts", "path": f"/proc/{first_pid}/ns/uts"}]
        out = run_in(runtime, tmp_path, busybox_rootfs,
                     "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc",
                     name="second", **{"linux.namespaces": namespaces, "hostname": None})
        net, uts, ipc = out.split()
        assert (net, uts) == (first["net"], first["uts"])
        assert ipc not in (first["ipc"], host["ipc"])
    finally:
        runtime("delete", "-f", "first")


def test_no_network_namespace_shares_the_host_network(runtime, tmp_path, busybox_rootfs):
    namespaces = [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]
    out = run_in(runtime, tmp_path, busybox_rootfs, "readlink /proc/self/ns/net", **{"linux.namespaces": namespaces})
    assert out.strip() == os.readlink("/proc/self/ns/net")


def test_loopback_is_up_in_a_new_network_namespace(runtime, tmp_path, busybox_rootfs):
    out = run_in(runtime, tmp_path, busybox_rootfs, "cat /sys/class/net/lo/operstate; cat /sys/class/net/lo/flags")
    assert int(out.split()[1], 16) & 1  # IFF_UP


def test_user_namespace_with_id_mappings(runtime, tmp_path, busybox_rootfs):
    namespaces = [{"type": t} for t in ("pid", "mount", "ipc", "uts", "network", "user")]
    mappings = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    out = run_in(runtime, tmp_path, busybox_rootfs,
                 "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u /bin/busybox",
                 **{"linux.namespaces": namespaces, "linux.uidMappings": mappings, "linux.gidMappings": mappings,
                    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
                    "linux.resources": None})
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["0", "100000", "65536"] and lines[1] == ["0", "100000", "65536"]
    # root in the container; the rootfs's host root owner is unmapped there (the overflow id)
    assert lines[2] == ["0"] and lines[3] == ["65534"]


def test_devices_and_default_dev(runtime, tmp_path, busybox_rootfs):
    devices = [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o620, "uid": 1000, "gid": 1000},
               {"path": "/dev/sub/myzero", "type": "c", "major": 1, "minor": 5},
               {"path": "/dev/myfifo", "type": "p"}]
    script = ("stat -c '%n %a %u:%g %t:%T %F' /dev/mynull /dev/sub/myzero /dev/null /dev/zero /dev/full /dev/random "
              "/dev/urandom /dev/tty; stat -c '%F' /dev/myfifo; "
              "for l in fd stdin stdout stderr ptmx; do echo $l=$(readlink /dev/$l); done")
    out = run_in(runtime, tmp_path, busybox_rootfs, script, **{"linux.devices": devices})
    lines = out.splitlines()
    assert lines[0] == "/dev/mynull 620 1000:1000 1:3 character special file"
    assert lines[1].startswith("/dev/sub/myzero ") and lines[1].endswith(" 1:5 character special file")
    expected_default = {"/dev/null": "1:3", "/dev/zero": "1:5", "/dev/full": "1:7", "/dev/random": "1:8",
                        "/dev/urandom": "1:9", "/dev/tty": "5:0"}
    for line in lines[2:8]:
        name, mode, owner, numbers = line.split()[:4]
        assert (mode, owner, numbers) == ("666", "0:0", expected_default[name])
    assert lines[8] == "fifo"
    assert lines[9:] == ["fd=/proc/self/fd", "stdin=/proc/self/fd/0", "stdout=/proc/self/fd/1",
                         "stderr=/proc/self/fd/2", "ptmx=pts/ptmx"]


def test_masked_and_readonly_paths(runtime, tmp_path, busybox_rootfs):
    # a masked file reads as /dev/null, a masked directory is an empty read-only tmpfs
    script = ("cat /proc/keys | wc -c; ls /proc/acpi | wc -l; touch /proc/acpi/x 2>/dev/null || echo acpi-ro;"
              " echo 1 > /proc/sys/vm/overcommit_memory 2>/dev/null || echo sys-ro;"
              " grep -c ' /proc/sys ro,' /proc/self/mountinfo")
    out = run_in(runtime, tmp_path, busybox_rootfs, script,
                 **{"linux.maskedPaths": ["/proc/keys", "/proc/acpi", "/proc/does-not-exist"]})
    assert out.split() == ["0", "0", "acpi-ro", "sys-ro", "1"]


def test_sysctl_in_the_container_namespaces(runtime, tmp_path, busybox_rootfs):
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host_forward = f.read()
    out = run_in(runtime, tmp_path, busybox_rootfs, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced",
                 **{"linux.sysctl": {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
                    "linux.readonlyPaths": []})
    assert out.split() == ["1", "1"]
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == host_forward


def test_sysctl_needing_a_namespace_the_container_lacks_is_refused(runtime, tmp_path, busybox_rootfs):
    namespaces = [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]
    make_bundle(tmp_path / "b", busybox_rootfs, ["true"],
                **{"linux.namespaces": namespaces, "linux.sysctl": {"net.ipv4.ip_forward": "1"}})
    done = runtime("run", "--bundle", tmp_path / "b", "s", check=False)
    assert done.returncode == 1 and "network namespace" in done.stderr
    assert runtime.ids() == []


def test_rootfs_propagation(runtime, tmp_path, busybox_rootfs):
    root_line = "awk '$5 == \"/\"' /proc/self/mountinfo"
    out = run_in(runtime, tmp_path, busybox_rootfs, root_line, name="shared", **{"linux.rootfsPropagation": "shared"})
    assert "shared:" in out
    out = run_in(runtime, tmp_path, busybox_rootfs, root_line, name="private", **{"linux.rootfsPropagation": "private"})
    assert out and "shared:" not in out and "master:" not in out


def test_chroot_without_mount_namespace_and_no_pivot(runtime, tmp_path, busybox_rootfs):
    namespaces = [{"type": "pid"}, {"type": "uts"}, {"type": "ipc"}]
    out = run_in(runtime, tmp_path, busybox_rootfs, "cat /etc/crate-image; ls /proc | wc -l", name="chroot",
                 **{"linux.namespaces": namespaces, "mounts": [], "linux.maskedPaths": [],
                    "linux.readonlyPaths": [], "root": {"path": busybox_rootfs}})
    assert out == "amd64\n0\n"  # no mount namespace: nothing is mounted, the root is a chroot
    bundle = tmp_path / "nopivot"
    make_bundle(bundle, busybox_rootfs, ["sh", "-c", "cat /etc/crate-image; ls /sys/fs/cgroup | wc -l"])
    done = runtime("run", "--no-pivot", "--bundle", bundle, "nopivot", check=False)
    assert done.returncode == 0 and done.stdout.startswith("amd64\n"), done.stderr


def test_all_hooks_get_the_state_in_order(runtime, tmp_path, busybox_rootfs):
    out = tmp_path / "hooks"
    out.mkdir()
    os.chmod(out, 0o777)

    def host_hook(phase):
        return {"path": "/bin/sh", "args": ["sh", "-c", f'cat > {out}/{phase}.json; echo $HOOK_PHASE >> {out}/order'],
                "env": [f"HOOK_PHASE={phase}"]}

    hooks = {phase: [host_hook(phase)] for phase in ("prestart", "createRuntime", "createContainer", "poststart",
                                                      "poststop")}
    # startContainer runs inside the container: its path and files are the container's
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /hooks/startContainer.json;"
                                                                        " echo startContainer >> /hooks/order"]}]
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/hooks", "type": "bind", "source": str(out), "options": ["rbind", "rw"]}]
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo ran >> /hooks/order"],
                **{"hooks": hooks, "mounts": mounts})
    runtime("create", "--bundle", tmp_path / "b", "hooked")
    pid = runtime.state("hooked")["pid"]
    runtime("start", "hooked")
    import time
    deadline = time.monotonic() + 10
    while runtime.state("hooked")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime("delete", "hooked")
    order = (out / "order").read_text().split()
    # poststart runs once the program has been executed (it may not have written yet)
    assert order in (["prestart", "createRuntime", "createContainer", "startContainer", "ran", "poststart",
                      "poststop"], ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                                    "ran", "poststop"])
    expected_status = {"prestart": "creating", "createRuntime": "creating", "createContainer": "creating",
                       "startContainer": "created", "poststart": "running", "poststop": "stopped"}
    for phase, status in expected_status.items():
        state = json.loads((out / f"{phase}.json").read_text())
        assert state["id"] == "hooked" and state["status"] == status, phase
        assert state["bundle"] == str(tmp_path / "b")
        if phase in ("prestart", "createRuntime", "poststart"):
            assert state["pid"] == pid, phase


@pytest.mark.parametrize("phase", ["prestart", "createRuntime", "createContainer"])
def test_failing_create_hook_fails_create_and_leaves_nothing(runtime, tmp_path, busybox_rootfs, phase):
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}
    make_bundle(tmp_path / "b", busybox_rootfs, ["true"], **{"hooks": {phase: [hook]}})
    done = runtime("create", "--bundle", tmp_path / "b", "h", check=False)
    assert done.returncode == 1
    assert f"{phase} hook #0" in done.stderr and "exit status 3" in done.stderr and "hook-said-no" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert runtime.ids() == [] and os.listdir(runtime.root) == []
    assert processes_in(busybox_rootfs) == []


def test_hook_timeout(runtime, tmp_path, busybox_rootfs):
    hook = {"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}
    make_bundle(tmp_path / "b", busybox_rootfs, ["true"], **{"hooks": {"prestart": [hook]}})
    done = runtime("create", "--bundle", tmp_path / "b", "t", check=False, timeout=20)
    assert done.returncode == 1 and "timed out after 1s" in done.stderr
    assert runtime.ids() == []


def test_failing_poststart_and_poststop_hooks_only_warn(runtime, tmp_path, busybox_rootfs):
    failing = {"path": "/bin/false", "args": ["false"]}
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo container-ran"],
                **{"hooks": {"poststart": [failing], "poststop": [failing]}})
    done = runtime("run", "--bundle", tmp_path / "b", "w", check=False)
    assert done.returncode == 0 and "container-ran" in done.stdout
    with open(runtime.log) as f:  # with --log, warnings go to the log, as runc's do
        warnings = [json_or_text for json_or_text in f.read().splitlines() if "level=warning" in json_or_text]
    assert any("poststart hook #0" in w for w in warnings) and any("poststop hook #0" in w for w in warnings)
    assert runtime.ids() == []


def test_failing_start_container_hook_stops_the_process(runtime, tmp_path, busybox_rootfs):
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}
    make_bundle(tmp_path / "b", busybox_rootfs, ["sh", "-c", "echo must-not-run"],
                **{"hooks": {"startContainer": [hook]}})
    done = runtime("run", "--bundle", tmp_path / "b", "sc", check=False)
    assert done.returncode != 0 and "must-not-run" not in done.stdout
    assert "startContainer hook #0" in done.stderr


def test_seccomp_profile_applies_to_the_container(runtime, tmp_path, busybox_rootfs):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    for nnp in (True, False):
        out = run_in(runtime, tmp_path, busybox_rootfs, "mkdir /tmp/x 2>&1; echo rc=$?; grep Seccomp: /proc/self/status",
                     name=f"nnp{nnp}", **{"linux.seccomp": profile, "process.noNewPrivileges": nnp,
                                          "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                                                     {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]})
        assert "Permission denied" in out and "rc=1" in out and "Seccomp:\t2" in out, out


def test_seccomp_notify_fd_reaches_the_agent(runtime, tmp_path, busybox_rootfs):
    """SCMP_ACT_NOTIFY: the parent hands the listener fd and the state to listenerPath (runc's
    protocol); once the agent closes it, notified syscalls fail with ENOSYS."""
    import socket
    import threading
    agent_path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(agent_path)
    server.listen(1)
    received = {}

    def agent():
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, 65536, 4)
        received["message"] = json.loads(message)
        received["fd_is_anon_inode"] = os.readlink(f"/proc/self/fd/{fds[0]}")
        for fd in fds:
            os.close(fd)  # no agent behind it: the kernel answers ENOSYS
        conn.close()

    thread = threading.Thread(target=agent)
    thread.start()
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": agent_path, "listenerMetadata": "crate-test",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    out = run_in(runtime, tmp_path, busybox_rootfs, "mkdir /tmp/x 2>&1; echo rc=$?",
                 **{"linux.seccomp": profile,
                    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                               {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]})
    thread.join(10)
    server.close()
    assert "Function not implemented" in out and "rc=1" in out
    message = received["message"]
    assert message["fds"] == ["seccompFd"] and message["metadata"] == "crate-test"
    assert message["state"]["id"] == "c" and message["pid"] == message["state"]["pid"] > 0
    assert "seccomp" in received["fd_is_anon_inode"]
