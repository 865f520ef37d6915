"""crate run end to end, as root: real images from the local registry, real crate-runc (and
Debian's runc through --runtime), real terminals."""
import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.registry]


def runtime_ids(runtime_root, binary="crate-runc"):
    """Container ids the runtime knows under crate's runtime root for it."""
    done = subprocess.run([binary, "--root", runtime_root, "list", "-q"], capture_output=True, text=True)
    return done.stdout.split() if done.returncode == 0 else []


def ps_json(crate, *args):
    return [json.loads(line) for line in crate("ps", "--format", "json", *args).stdout.splitlines()]


def test_foreground_run_passes_output_and_exit_status(crate, crate_images):
    done = crate("run", crate_images["busybox"], "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr.splitlines()[-1] == "err"
    (entry,) = ps_json(crate, "-a")
    assert entry["State"] == "exited" and entry["Status"].startswith("Exited (3)")
    assert entry["Image"] == crate_images["busybox"] and entry["Command"] == '"sh -c echo out; echo err >&2; exit 3"'
    # the foreground run was logged too, each stream apart
    logs = crate("logs", entry["ID"])
    assert logs.stdout == "out\n" and logs.stderr == "err\n"


def test_missing_image_is_pulled_with_progress(crate, crate_images):
    done = crate("run", "--rm", crate_images["busybox"], "true")
    assert f"Unable to find image '{crate_images['busybox']}' locally" in done.stderr
    assert "Pull complete" in done.stderr
    images = crate("images").stdout.splitlines()
    assert images[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    repository, tag = crate_images["busybox"].rsplit(":", 1)
    assert any(line.split()[:2] == [repository, tag] for line in images[1:])
    again = crate("run", "--rm", crate_images["busybox"], "true")
    assert "Unable to find" not in again.stderr  # stored now


def test_rm_flag_leaves_nothing(crate, crate_images):
    crate("run", "--rm", "--name", "gone", crate_images["busybox"], "sh", "-c", "echo hi")
    assert crate.container_dirs() == []
    assert crate.mounts() == []
    assert crate("ps", "-a", "-q").stdout == ""
    assert runtime_ids("/run/crate/crate-runc") == [] or all(
        not i.startswith("gone") for i in runtime_ids("/run/crate/crate-runc"))


def test_kept_container_keeps_its_bundle_until_rm(crate, crate_images):
    crate("run", "--name", "kept", crate_images["busybox"], "sh", "-c", "echo data > /file")
    info = crate.inspect("kept")
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
    assert os.path.isdir(info["BundlePath"])
    assert info["Rootfs"]["Mode"] == "overlay"
    assert os.path.realpath(os.path.join(info["BundlePath"], "rootfs")) in crate.mounts()
    assert runtime_ids(info["RuntimeRoot"]).count(info["Id"]) == 0  # the runtime's state went at exit
    crate("rm", "kept")
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_stdin_with_and_without_i(crate, crate_images):
    crate("pull", "-q", crate_images["busybox"])
    done = crate("run", "--rm", "-i", crate_images["busybox"], "sh", "-c", "cat; echo end", input="line one\nline two\n")
    assert done.stdout == "line one\nline two\nend\n"
    # without -i the container's stdin is empty (not crate's)
    done = crate("run", "--rm", crate_images["busybox"], "sh", "-c", "cat; echo end", input="ignored\n")
    assert done.stdout == "end\n"


def test_run_options_reach_the_process(crate, crate_images):
    done = crate("run", "--rm", "-e", "A=1", "--env=B=two words", "-e", "FROM_CRATE", "-w", "/tmp", "-u", "crate",
                 "--hostname", "boxy", crate_images["busybox"],
                 "sh", "-c", 'echo "$A|$B|$FROM_CRATE|$(pwd)|$(id -un):$(id -u):$(id -g)|$(hostname)|$HOME"',
                 env={"FROM_CRATE": "passed"})
    assert done.stdout == "1|two words|passed|/tmp|crate:1000:1000|boxy|/home/crate\n"
    # the default host name is the short id
    crate("run", "--name", "named", crate_images["busybox"], "hostname")
    assert crate("logs", "named").stdout.strip() == crate.inspect("named")["Id"][:12]


def test_network_modes(crate, crate_images):
    none = crate("run", "--rm", "--network", "none", crate_images["busybox"], "ls", "/sys/class/net").stdout.split()
    assert none == ["lo"]
    host = crate("run", "--rm", crate_images["busybox"], "ls", "/sys/class/net").stdout.split()
    assert sorted(host) == sorted(os.listdir("/sys/class/net"))


def test_image_entrypoint_cmd_user_workdir_and_overrides(crate, crate_images):
    image = crate_images["config"]
    done = crate("run", "--rm", image)
    assert done.stdout == "entrypoint: default cmd\n"
    assert crate("run", "--rm", image, "given", "args").stdout == "entrypoint: given args\n"
    done = crate("run", "--rm", "--entrypoint", "sh", image, "-c", "echo $(id -un) $(pwd) $FOO")
    assert done.stdout == "crate /home/crate bar\n"
    info_stop = crate("create", "--name", "cfg", image).stdout.strip()
    assert crate.inspect(info_stop)["Config"]["StopSignal"] == "SIGQUIT"


def test_terminal_with_it_is_a_real_pty(crate, crate_images, pty_session):
    crate("pull", "-q", crate_images["busybox"])
    session = pty_session(crate.command("run", "-it", "--rm", crate_images["busybox"], "sh"), rows=33, cols=101)
    session.expect(b"# ")
    session.send(b"stty size; tty; echo TERM=$TERM\r")
    session.expect(b"33 101")
    session.expect(b"/dev/pts/0")
    session.expect(b"TERM=xterm")
    session.resize(40, 120)  # the kernel sends crate SIGWINCH: the container's terminal follows
    time.sleep(0.3)
    session.send(b"stty size\r")
    session.expect(b"40 120")
    # ^C reaches the container's terminal (raw mode), interrupting its foreground job, not crate
    session.send(b"sleep 30; echo not-interrupted\r")
    time.sleep(0.5)
    session.send(b"\x03")
    session.expect(b"# ")
    session.send(b"echo still-here; exit 5\r")
    assert session.wait() == 5
    assert b"\nstill-here" in session.output
    assert b"\nnot-interrupted" not in session.output  # only the echo of the typed line has it
    assert crate.container_dirs() == []


def test_tty_output_is_logged_for_detached_containers(crate, crate_images):
    cid = crate("run", "-d", "-t", crate_images["busybox"], "sh", "-c", "tty; stty size; echo done").stdout.strip()
    deadline = time.monotonic() + 20
    while crate.inspect(cid)["State"]["Status"] != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert crate("logs", cid).stdout == "/dev/pts/0\n24 80\ndone\n"  # (text mode reads \r\n as \n)
    with open(crate.inspect(cid)["LogPath"]) as f:
        entries = [json.loads(line) for line in f]
    assert [(e["log"], e["stream"]) for e in entries] == [("/dev/pts/0\r\n", "stdout"), ("24 80\r\n", "stdout"),
                                                         ("done\r\n", "stdout")]


@pytest.mark.parametrize("runtime", ["runc", "crate-runc"])
def test_other_runtime_through_the_runc_cli(crate, crate_images, runtime):
    """--runtime runc drives Debian's runc exactly as crate-runc: run, exit codes, exec, stop."""
    image = crate_images["busybox"]
    done = crate("run", "--rm", "--runtime", runtime, image, "sh", "-c", "echo via; exit 4", check=False)
    assert (done.returncode, done.stdout) == (4, "via\n")
    cid = crate("run", "-d", "--runtime", runtime, "--name", "svc", image, "sh", "-c",
                "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.1; done").stdout.strip()
    info = crate.inspect("svc")
    assert os.path.basename(info["HostConfig"]["Runtime"]) == runtime
    assert cid in runtime_ids(info["RuntimeRoot"], runtime)
    done = crate("exec", "-e", "X=1", "-w", "/tmp", "svc", "sh", "-c", "echo $X $(pwd); exit 6", check=False)
    assert (done.returncode, done.stdout) == (6, "1 /tmp\n")
    crate("stop", "svc")
    info = crate.inspect("svc")
    assert info["State"]["ExitCode"] == 0
    assert crate("logs", "svc").stdout == "up\nbye\n"
    assert cid not in runtime_ids(info["RuntimeRoot"], runtime)
    crate("rm", "svc")
    assert crate.container_dirs() == [] and crate.mounts() == []


def test_it_with_runc(crate, crate_images, pty_session):
    crate("pull", "-q", crate_images["busybox"])
    session = pty_session(crate.command("run", "-it", "--rm", "--runtime", "runc", crate_images["busybox"], "sh"),
                          rows=20, cols=70)
    session.expect(b"# ")
    session.send(b"stty size; exit 3\r")
    session.expect(b"20 70")
    assert session.wait() == 3


def test_readme_first_command_through_a_docker_io_mirror(crate, crate_images, registry):
    """`crate run alpine echo hello`, the README's first command, with docker.io mirrored by the
    local registry (Docker Hub is unreachable here; the path is the same: docker.io/library/alpine)."""
    with open(crate.env["CRATE_REGISTRIES_CONF"], "w") as f:
        f.write(f'[registries."docker.io"]\nmirrors = ["{registry.host}"]\n')
    done = crate("run", "alpine", "echo", "hello")
    assert done.stdout == "hello\n"
    assert "Unable to find image 'alpine' locally" in done.stderr
    images = crate("images", "--format", "json").stdout.splitlines()
    assert [(json.loads(i)["Repository"], json.loads(i)["Tag"]) for i in images] == [("alpine", "latest")]
    assert crate.inspect("alpine")["Name"] == "docker.io/library/alpine:latest"


def test_sigterm_to_foreground_crate_reaches_the_container(crate, crate_images):
    crate("pull", "-q", crate_images["busybox"])
    process = crate.popen("run", "--name", "fg", crate_images["busybox"], "sh", "-c",
                          "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 7
    assert out == b"got-term\n"
    assert crate.inspect("fg")["State"]["ExitCode"] == 7


def test_three_ctrl_c_kill_a_container_that_ignores_them(crate, crate_images):
    crate("pull", "-q", crate_images["busybox"])
    process = crate.popen("run", "--rm", crate_images["busybox"], "sh", "-c",
                          "trap '' INT; echo ready; while :; do sleep 0.1; done",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout.readline() == b"ready\n"
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 137
    assert b"interrupted three times" in err
    assert crate.container_dirs() == []
