"""Bad input and interruptions: one line `crate: <problem>; <fix>` on stderr, a non-zero status,
and nothing half-made (no record, bundle, mount, runtime state, monitor or container process)."""
import os
import signal
import stat
import subprocess
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.registry]


def one_line_error(done, status=None):
    assert done.returncode != 0, done
    if status is not None:
        assert done.returncode == status, done.stderr
    lines = [line for line in done.stderr.splitlines() if not _progress(line)]
    assert len(lines) == 1 and lines[0].startswith("crate: ") and "; " in lines[0], done.stderr
    return lines[0]


def _progress(line):
    """Pull progress lines (crate run pulls first) are not errors."""
    return line.startswith(("Unable to find image", "Digest:")) or ": Pull" in line or "pulling manifest" in line \
        or ": Already exists" in line


def processes_under(path):
    """Processes whose root or cwd lies under `path` (a container's rootfs)."""
    found = []
    real = os.path.realpath(path)
    for name in os.listdir("/proc"):
        if name.isdigit():
            for link in ("root", "cwd"):
                try:
                    if os.readlink(f"/proc/{name}/{link}").startswith(real):
                        found.append(int(name))
                except OSError:
                    pass
    return found


def monitors_of(crate):
    """Monitor processes working for this store."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"crate.monitor" in argv and crate.root.encode() in argv:
                found.append(int(name))
    return found


def nothing_left(crate):
    assert crate.container_dirs() == []
    assert crate.mounts() == []
    assert processes_under(crate.root) == []
    assert monitors_of(crate) == []


@pytest.fixture
def image(crate, crate_images):
    crate("pull", "-q", crate_images["busybox"])
    return crate_images["busybox"]


def test_unknown_image(crate, registry):
    done = crate("run", f"{registry.host}/library/nosuch:1", "true", check=False)
    line = one_line_error(done, 125)
    assert "not found" in line
    nothing_left(crate)
    done = crate("run", "Not/A:Valid:Ref", check=False)
    assert "invalid image reference" in one_line_error(done, 125)
    done = crate("inspect", "nosuch", check=False)
    assert one_line_error(done, 1) == "crate: no such container or image: nosuch; see `crate ps -a` and `crate images`"
    done = crate("rmi", "nosuch", check=False)
    assert one_line_error(done, 1).startswith("crate: no image 'nosuch'")


def test_unknown_container(crate):
    for command in (["start"], ["stop"], ["kill"], ["rm"], ["logs"], ["exec"], ["inspect", "--type=container"]):
        args = command + ["ghost"] + (["true"] if command == ["exec"] else [])
        done = crate(*args, check=False)
        assert one_line_error(done, 1) == "crate: no such container: ghost; see `crate ps -a` for names and ids"


def test_bad_flags_and_values(crate, image):
    cases = {
        ("run", "--bogus", image): "crate: unknown option --bogus for `crate run`; see `crate run --help`",
        ("run", "-x", image): "crate: unknown option -x for `crate run`; see `crate run --help`",
        ("run", "--name"): "crate: option --name needs a value; see `crate run --help`",
        ("run", "--rm=yes", image): "crate: option --rm takes no value; see `crate run --help`",
        ("run",): "crate: wrong arguments for `crate run`; usage: crate run [options] [--env=KV]... IMAGE [--] "
                  "[COMMAND...]",
        ("run", "--network", "bridge", image): "crate: unknown network 'bridge'; use --network host or --network "
                                               "none (no bridge networks yet)",
        ("run", "-w", "relative", image): "crate: the working directory 'relative' is not absolute; give a path "
                                          "starting with /",
        ("run", "--name", "bad/name", image): "crate: invalid container name 'bad/name'; use letters, digits, '_', "
                                              "'.' and '-', starting with a letter or digit",
        ("run", "-u", "nobody-here", image, "true"): "crate: user 'nobody-here' of the image is not in its "
                                                     "/etc/passwd; use a numeric uid (--user UID[:GID]) or fix the "
                                                     "image",
        ("kill", "-s", "NOPE", "x"): "crate: invalid signal 'NOPE'; use a name such as TERM or KILL, or a number",
        ("stop", "-t", "soon", "x"): "crate: invalid --time value 'soon'; give a whole number of 0 or more",
        ("logs", "--tail", "many", "x"): "crate: invalid --tail value 'many'; give a whole number of 0 or more",
        ("ps", "--format", "xml"): "crate: unknown format 'xml'; use --format table or --format json",
        ("frobnicate",): "crate: unknown command 'frobnicate'; Usage: crate [--root=DIR] COMMAND [ARG...] with "
                         "COMMAND one of run, create, start, stop, kill, rm, ps, logs, exec, inspect, pull, images, "
                         "rmi (crate --help)",
    }
    crate("create", "--name", "x", image, "true")
    for args, expected in cases.items():
        done = crate(*args, check=False)
        assert one_line_error(done) == expected, args
    crate("rm", "x")
    nothing_left(crate)


def test_help_and_version(crate):
    assert crate("--version").stdout == "crate version 0.1.0\n"
    top = crate("--help").stdout
    for name in ("run", "create", "start", "stop", "kill", "rm", "ps", "logs", "exec", "inspect", "pull", "images",
                 "rmi"):
        assert f"\n  {name} " in top
        assert crate(name, "--help").stdout.startswith(("Create", "Start", "Stop", "Send", "Remove", "List", "Print",
                                                        "Run", "Show", "Pull"))


def test_name_in_use_makes_nothing(crate, image):
    crate("create", "--name", "taken", image, "true")
    before = (crate.container_dirs(), crate.mounts())
    done = crate("run", "--name", "taken", image, "true", check=False)
    assert one_line_error(done, 125).startswith("crate: the name 'taken' is already in use by container ")
    assert (crate.container_dirs(), crate.mounts()) == before
    crate("rm", "taken")
    nothing_left(crate)


def test_runtime_missing(crate, image, tmp_path):
    done = crate("run", "--runtime", "no-such-runtime", image, "true", check=False)
    assert one_line_error(done, 125) == "crate: runtime 'no-such-runtime' not found on PATH; install it (e.g. " \
                                        "apt-get install no-such-runtime) or pass --runtime /path/to/no-such-runtime"
    done = crate("run", "--runtime", str(tmp_path / "nothing"), image, "true", check=False)
    assert "is not an executable file" in one_line_error(done, 125)
    nothing_left(crate)


def test_image_without_a_command(crate, crate_images):
    done = crate("run", crate_images["nocmd"], check=False)
    assert one_line_error(done, 125) == "crate: the image has neither Entrypoint nor Cmd; give the command to run"
    nothing_left(crate)
    assert crate("run", "--rm", crate_images["nocmd"], "echo", "given").stdout == "given\n"


def test_command_not_found_or_not_executable(crate, image):
    done = crate("run", image, "no-such-command", check=False)
    assert one_line_error(done, 127).startswith("crate: cannot start the container: ")
    nothing_left(crate)
    done = crate("run", "--runtime", "runc", image, "/etc/passwd", check=False)
    assert "permission denied" in one_line_error(done, 126)
    nothing_left(crate)
    # a container made by create stays (created) when its start fails, with the error recorded
    crate("create", "--name", "broken", image, "no-such-command")
    done = crate("start", "broken", check=False)
    assert done.returncode == 1 and "cannot start the container" in done.stderr
    info = crate.inspect("broken")
    assert info["State"]["Status"] == "created" and "not found" in info["State"]["Error"]
    assert subprocess.run(["crate-runc", "--root", info["RuntimeRoot"], "state", info["Id"]],
                          capture_output=True).returncode != 0
    crate("rm", "broken")
    nothing_left(crate)


@pytest.fixture
def slow_runtime(tmp_path):
    """crate-runc behind a wrapper that lingers after `create` made the container, until the file
    `release` appears (30 s at most): a window for interrupting crate while a created (not
    started) container exists."""
    path = tmp_path / "slow-runc"
    real = subprocess.run(["sh", "-c", "command -v crate-runc"], capture_output=True, text=True).stdout.strip()
    path.write_text(f"""#!/bin/sh
"{os.path.realpath(real)}" "$@"
status=$?
for arg in "$@"; do
  if [ "$arg" = create ]; then
    echo created > "{tmp_path}/created"
    i=0; while [ ! -e "{tmp_path}/release" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  fi
done
exit $status
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    yield str(path)
    try:
        os.rmdir("/run/crate/slow-runc")  # the runtime root crate gave it, empty when all went well
    except OSError:
        pass


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("detach", [False, True])
def test_interrupt_while_starting_leaves_nothing(crate, image, slow_runtime, tmp_path, detach):
    process = crate.popen("run", *(["-d"] if detach else []), "--runtime", slow_runtime, image, "sleep", "60",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    wait_for(tmp_path / "created")
    (cid,) = crate.container_dirs()
    runtime_root = f"/run/crate/{os.path.basename(slow_runtime)}"
    assert subprocess.run(["crate-runc", "--root", runtime_root, "state", cid], capture_output=True).returncode == 0
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "crate: interrupted; nothing half-made was kept"
    assert out == ""
    nothing_left(crate)
    assert subprocess.run(["crate-runc", "--root", runtime_root, "state", cid], capture_output=True).returncode != 0


def test_sigterm_while_pulling_leaves_nothing(crate, faulty_proxy):
    faulty_proxy.mode = "slow"  # 16 kB every 50 ms: the busybox layer takes seconds
    ref = f"{faulty_proxy.host}/library/busybox:latest"
    process = crate.popen("run", ref, "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while not any("/blobs/" in path for _, path, _ in faulty_proxy.log):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "crate: interrupted; nothing half-made was kept"
    nothing_left(crate)
    assert crate("images", "-q").stdout == ""
    assert os.listdir(os.path.join(crate.root, "tmp")) == []


def test_rm_force_while_the_monitor_is_still_starting_it(crate, image, slow_runtime, tmp_path):
    starting = crate.popen("run", "-d", "--runtime", slow_runtime, image, "sleep", "60", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    wait_for(tmp_path / "created")
    (cid,) = crate.container_dirs()
    assert crate.inspect(cid)["State"]["Status"] == "starting"
    removing = crate.popen("rm", "-f", cid[:12], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert removing.poll() is None  # it waits for the start to finish, then kills
    (tmp_path / "release").write_text("")
    out, err = removing.communicate(timeout=60)
    assert (removing.returncode, out, err) == (0, cid[:12] + "\n", "")
    starting.communicate(timeout=60)
    nothing_left(crate)
