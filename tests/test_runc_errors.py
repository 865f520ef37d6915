"""Bad input: one clear error line (also in --log), a non-zero exit, and nothing left behind."""
import json
import os

import pytest

from runtime_helpers import cgroup_dirs, make_bundle, mounts_under, processes_in

pytestmark = pytest.mark.root

LOOP = ["sh", "-c", "while :; do sleep 0.05; done"]


def assert_failed_cleanly(done, runtime, expected, bundle=None, rootfs=None):
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("crate-runc: ") and expected in lines[0], lines[0]
    if bundle is not None:
        assert cgroup_dirs(bundle) == []
        assert mounts_under(str(bundle)) == []
    if rootfs is not None:
        assert processes_in(rootfs) == []
    if runtime.log and os.path.exists(runtime.log):
        with open(runtime.log) as f:
            last = f.read().splitlines()[-1]
        entry = json.loads(last)
        assert entry["level"] == "error" and entry["msg"] == lines[0][len("crate-runc: "):]
        assert entry["time"].endswith("Z")


def leftovers(runtime):
    return sorted(os.listdir(runtime.root)) if os.path.isdir(runtime.root) else []


def create(runtime, bundle, container_id):
    return runtime("create", "--bundle", bundle, container_id, check=False, log_format="json")


def test_missing_config(runtime, tmp_path):
    (tmp_path / "empty").mkdir()
    done = create(runtime, tmp_path / "empty", "x")
    assert_failed_cleanly(done, runtime, "no config.json in bundle")
    assert "crate-runc spec" in done.stderr
    assert leftovers(runtime) == []


def test_unreadable_config(runtime, tmp_path):
    (tmp_path / "b" / "config.json").mkdir(parents=True)  # a directory cannot be read, even by root
    assert_failed_cleanly(create(runtime, tmp_path / "b", "x"), runtime, "cannot read")
    assert leftovers(runtime) == []


def test_config_that_is_not_json(runtime, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    assert_failed_cleanly(create(runtime, tmp_path / "b", "x"), runtime, "is not valid JSON")
    assert leftovers(runtime) == []


@pytest.mark.parametrize("change, where", [
    ({"process.args": "sh"}, "$.process.args"),
    ({"ociVersion": None}, "ociVersion"),
    ({"linux.namespaces": [{"type": "pid"}, {"type": "bogus"}]}, "$.linux.namespaces[1].type"),
    ({"mounts": [{"destination": 5}]}, "$.mounts[0].destination"),
    ({"process.user": {"uid": -1}}, "$.process.user.uid"),
    ({"hooks": {"prestart": [{"args": ["x"]}]}}, "path"),
])
def test_schema_invalid_config_names_the_field(runtime, tmp_path, busybox_rootfs, change, where):
    make_bundle(tmp_path / "b", busybox_rootfs, ["true"], **change)
    done = create(runtime, tmp_path / "b", "x")
    assert_failed_cleanly(done, runtime, where)
    assert "invalid" in done.stderr
    assert leftovers(runtime) == []


def test_semantic_errors_in_config(runtime, tmp_path, busybox_rootfs):
    for change, expected in [({"process.args": []}, "$.process.args must not be empty"),
                             ({"process.cwd": "relative"}, "absolute path"),
                             ({"root": {"path": str(tmp_path / "nowhere")}}, "is not a directory"),
                             ({"linux.namespaces": [{"type": "pid"}, {"type": "pid"}]}, "appears twice"),
                             ({"process.capabilities": {"bounding": ["CAP_NOT_REAL"]}}, "unknown capability")]:
        make_bundle(tmp_path / "b", busybox_rootfs, ["true"], **change)
        assert_failed_cleanly(create(runtime, tmp_path / "b", "x"), runtime, expected, tmp_path / "b", busybox_rootfs)
        assert leftovers(runtime) == []


def test_missing_binary_fails_create(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, ["no-such-program", "arg"])
    done = create(runtime, tmp_path / "b", "x")
    assert_failed_cleanly(done, runtime, "executable file not found in $PATH", tmp_path / "b", busybox_rootfs)
    assert leftovers(runtime) == []
    make_bundle(tmp_path / "b", busybox_rootfs, ["/bin/nope"])
    assert_failed_cleanly(create(runtime, tmp_path / "b", "y"), runtime, "no such file",
                          tmp_path / "b", busybox_rootfs)
    assert leftovers(runtime) == []
    make_bundle(tmp_path / "b", busybox_rootfs, ["/etc/passwd"])  # there, but not executable
    assert_failed_cleanly(create(runtime, tmp_path / "b", "z"), runtime, "permission denied",
                          tmp_path / "b", busybox_rootfs)
    assert leftovers(runtime) == []


@pytest.mark.parametrize("bad_id", ["a/b", "..", "../escape", ".hidden", "", "spa ce", "é"])
def test_invalid_container_ids_are_refused(runtime, tmp_path, busybox_rootfs, bad_id):
    make_bundle(tmp_path / "b", busybox_rootfs, ["true"])
    done = create(runtime, tmp_path / "b", bad_id)
    assert done.returncode != 0
    assert_failed_cleanly(done, runtime, "invalid container id")
    for command in ("start", "state", "kill", "delete"):
        assert runtime(command, bad_id, check=False).returncode != 0
    assert leftovers(runtime) == []
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("command", ["start", "state", "kill", "delete"])
def test_unknown_container(runtime, command):
    done = runtime(command, "nope", check=False, log_format="json")
    assert_failed_cleanly(done, runtime, "container 'nope' does not exist")


def test_delete_force_of_unknown_container_succeeds(runtime):
    assert runtime("delete", "--force", "nope", check=False).returncode == 0


def test_duplicate_id(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("create", "--bundle", tmp_path / "b", "dup")
    pid = runtime.state("dup")["pid"]
    done = create(runtime, tmp_path / "b", "dup")
    assert_failed_cleanly(done, runtime, "already exists")
    state = runtime.state("dup")
    assert state["status"] == "created" and state["pid"] == pid  # the first one is untouched
    runtime("delete", "dup")
    assert processes_in(busybox_rootfs) == []


def test_commands_in_the_wrong_state(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("run", "-d", "--bundle", tmp_path / "b", "w")
    assert_failed_cleanly(runtime("start", "w", check=False, log_format="json"), runtime, "already running")
    assert_failed_cleanly(runtime("delete", "w", check=False, log_format="json"), runtime, "not stopped: running")
    assert runtime.state("w")["status"] == "running"
    runtime("kill", "w", "KILL")
    import time
    deadline = time.monotonic() + 10
    while runtime.state("w")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert_failed_cleanly(runtime("start", "w", check=False, log_format="json"), runtime, "has stopped")
    assert_failed_cleanly(runtime("kill", "w", check=False, log_format="json"), runtime, "not running")
    runtime("delete", "w")
    assert leftovers(runtime) == []


def test_bad_signal(runtime, tmp_path, busybox_rootfs):
    make_bundle(tmp_path / "b", busybox_rootfs, LOOP)
    runtime("create", "--bundle", tmp_path / "b", "sig")
    for bad in ("SIGNOPE", "99", "0"):
        assert_failed_cleanly(runtime("kill", "sig", bad, check=False, log_format="json"), runtime, "invalid signal")
    assert runtime.state("sig")["status"] == "created"
    runtime("delete", "sig")


def test_unsupported_global_options(runtime):
    done = runtime("--systemd-cgroup", "state", "x", check=False)
    assert done.returncode != 0 and "--systemd-cgroup is not supported" in done.stderr
    done = runtime("--log-format", "xml", "state", "x", check=False)
    assert done.returncode != 0 and "invalid --log-format" in done.stderr
    done = runtime("frobnicate", check=False)
    assert done.returncode != 0 and "unknown command 'frobnicate'" in done.stderr
