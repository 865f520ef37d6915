"""crate-runc's command line: runc's options and forms, the fast parser agreeing with docopt-ng,
and a lean start-up path."""
import json
import os
import subprocess

import pytest
from docopt import DocoptExit, docopt

from crate_runc import cli
from runtime_helpers import make_bundle, runtime_binary

# every form the recorded podman/conmon and containerd calls use, plus the variants runc accepts
FORMS = [
    ["create", "--bundle", "/b", "--pid-file", "/p", "id1"],
    ["create", "--bundle=/b", "--pid-file=/p", "--console-socket", "/s", "id1"],
    ["create", "-b", "/b", "--no-pivot", "--no-new-keyring", "--preserve-fds", "2", "id1"],
    ["create", "id1"],
    ["start", "id1"],
    ["run", "-d", "--bundle", "/b", "--keep", "id1"],
    ["run", "--detach", "--pid-file=/p", "id1"],
    ["state", "id1"],
    ["kill", "id1"],
    ["kill", "id1", "9"],
    ["kill", "--all", "id1", "SIGKILL"],
    ["kill", "-a", "id1", "KILL"],
    ["delete", "id1"],
    ["delete", "--force", "id1"],
    ["delete", "-f", "id1"],
    ["list"],
    ["list", "-q"],
    ["list", "--format", "json"],
    ["list", "-f", "json", "--quiet"],
    ["spec", "--rootless", "--bundle", "/b"],
    ["spec"],
    ["features"],
    ["exec", "--pid-file", "/p", "--process", "/f", "--detach", "id1"],
    ["exec", "--process", "/f", "--detach", "--pid-file", "/p", "id1"],
    ["exec", "--pid-file", "/p", "--process", "/f", "--detach", "--tty", "--console-socket", "/s", "id1"],
    ["exec", "-e", "A=1", "--env=B=2", "-t", "--user", "1000", "id1", "sh", "-c", "echo -n $A"],
    ["exec", "id1", "--", "ls", "-l"],
    ["ps", "--format", "json", "id1"],
    ["ps", "id1", "-o", "pid,comm"],
    ["pause", "id1"],
    ["resume", "id1"],
    ["update", "--memory", "64M", "--pids-limit=10", "id1"],
    ["update", "-r", "/r.json", "id1"],
    ["events", "--stats", "id1"],
]
GLOBAL_FORMS = [
    ["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "x"],
    ["--root=/r", "--log=/l", "--log-format=json", "delete", "--force", "x"],
    ["--debug", "--rootless", "true", "state", "x"],
    ["--systemd-cgroup", "kill", "x", "15"],
    ["--criu", "/usr/sbin/criu", "list"],
    ["start", "x"],
]


@pytest.mark.parametrize("argv", GLOBAL_FORMS, ids=lambda a: " ".join(a))
def test_fast_parser_agrees_with_docopt_on_global_options(argv):
    fast = cli.fast_parse(cli.__doc__, argv)
    assert fast is not None, "a form clients use must take the fast path"
    assert fast == docopt(cli.__doc__, argv=argv, options_first=True)


@pytest.mark.parametrize("argv", FORMS, ids=lambda a: " ".join(a))
def test_fast_parser_agrees_with_docopt_on_commands(argv):
    doc = cli.COMMANDS[argv[0]][0]
    fast = cli.fast_parse(doc, argv)
    assert fast is not None, "a form clients use must take the fast path"
    if "[--]" in doc:  # exec, ps: docopt reads options up to <id> only (runc's way)
        slow = docopt(doc, argv=cli._end_options_after_first_positional(doc, argv))
        fast.pop("--"), slow.pop("--")
    else:
        slow = docopt(doc, argv=argv)
    assert fast == slow


@pytest.mark.parametrize("argv", [["create"], ["create", "--bogus", "x"], ["kill", "x", "9", "extra"],
                                  ["start", "--help"], ["delete", "--force=yes", "x"], ["create", "-b"]])
def test_unusual_forms_go_to_docopt(argv):
    doc = cli.COMMANDS[argv[0]][0]
    assert cli.fast_parse(doc, argv) is None
    with pytest.raises((DocoptExit, SystemExit)):
        docopt(doc, argv=argv)


def crate_runc(*args, **kwargs):
    return subprocess.run([runtime_binary(), *args], capture_output=True, text=True, **kwargs)


def test_version():
    out = crate_runc("--version")
    assert out.returncode == 0
    first, second = out.stdout.splitlines()[:2]
    assert first.startswith("crate-runc version ")
    assert second.startswith("spec: 1.")
    assert crate_runc("-v").stdout == out.stdout


def test_help_lists_the_commands_and_each_command_has_help():
    out = crate_runc("--help")
    assert out.returncode == 0
    for name in ("create", "start", "run", "state", "kill", "delete", "list", "spec", "features", "exec", "ps",
                 "pause", "resume", "update", "events"):
        assert f"  {name} " in out.stdout
        sub = crate_runc(name, "--help")
        assert sub.returncode == 0 and f"crate-runc {name}" in sub.stdout


def test_usage_errors_exit_non_zero():
    out = crate_runc("kill")
    assert out.returncode != 0 and "Usage:" in out.stdout + out.stderr


def test_spec_writes_runc_template_in_both_option_forms(tmp_path):
    assert crate_runc("spec", "--bundle", str(tmp_path)).returncode == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["process"]["args"] == ["sh"] and config["root"] == {"path": "rootfs", "readonly": True}
    import crate_schemas
    crate_schemas.validate(config, "runtime-config")
    again = crate_runc("spec", f"--bundle={tmp_path}")
    assert again.returncode != 0 and "already exists" in again.stderr
    (tmp_path / "r").mkdir()
    assert crate_runc("spec", "--rootless", f"--bundle={tmp_path / 'r'}").returncode == 0
    rootless = json.loads((tmp_path / "r" / "config.json").read_text())
    assert {"type": "user"} in rootless["linux"]["namespaces"]
    assert rootless["linux"]["uidMappings"][0]["hostID"] == os.geteuid()
    crate_schemas.validate(rootless, "runtime-config")


def test_features_document_is_schema_valid():
    out = crate_runc("features")
    assert out.returncode == 0
    features = json.loads(out.stdout)
    import crate_schemas
    crate_schemas.validate(features, "runtime-features")
    assert "create" not in features and features["linux"]["namespaces"]
    assert "rbind" in features["mountOptions"] and features["hooks"][0] == "prestart"


HEAVY = ("json", "re", "subprocess", "argparse", "logging", "docopt", "jsonschema", "requests", "crate_schemas",
         "socket", "signal", "datetime")
PROBE = """
import sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
with open(sys.argv[0]) as f:
    script = compile(f.read(), sys.argv[0], "exec")
try:
    exec(script, {{"__name__": "__main__"}})
except SystemExit:
    pass
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


@pytest.mark.root
def test_hot_paths_import_nothing_heavy(runtime, tmp_path, busybox_rootfs):
    """create/start/state/kill/delete must not import json, re, subprocess, argparse, logging..."""
    bundle = tmp_path / "b"
    make_bundle(bundle, busybox_rootfs, ["sh", "-c", "while :; do sleep 0.05; done"])
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(heavy=HEAVY))
    python = os.path.join(os.path.dirname(runtime_binary()), "python")
    for argv in (["create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "hot"],
                 ["start", "hot"], ["state", "hot"], ["kill", "hot", "KILL"], ["delete", "--force", "hot"]):
        with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w+") as err:  # files: the
            subprocess.run([python, str(script), runtime_binary(), "--root", runtime.root, *argv],  # container
                           stdout=out, stderr=err, timeout=30)                                       # inherits them
            err.seek(0)
            report = err.read()
        heavy = [line for line in report.splitlines() if line.startswith("HEAVY=")]
        assert heavy == ["HEAVY="], (argv[0], report)
