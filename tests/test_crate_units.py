"""crate's parts that need no container: the json log writer and reader, command-line checking,
signals, durations, and the record store (real directories, real locks, real processes)."""
import io
import json
import multiprocessing
import os

import pytest

from crate import cli, engine, formats, logs
from crate.containers import Store, alive, now, parse_time, proc_start_time
from crate.errors import Error


# ------------------------------------------------------------------ logs
def entries_of(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_log_writer_splits_lines_like_docker(tmp_path):
    path = tmp_path / "c-json.log"
    writer = logs.LogWriter(str(path))
    writer.write("stdout", b"one\ntw")
    writer.write("stderr", b"err\n")
    writer.write("stdout", b"o\nthree")
    writer.write("stdout", "caf\u00e9 \xff\n".encode("latin-1"))  # not UTF-8: replaced
    writer.write("stderr", b"x" * (16 * 1024 + 5) + b"\n")
    writer.close()  # what has no newline yet is written at the end
    got = [(e["log"], e["stream"]) for e in entries_of(path)]
    assert got == [("one\n", "stdout"), ("err\n", "stderr"), ("two\n", "stdout"),
                   ("threecaf\ufffd \ufffd\n", "stdout"), ("x" * 16 * 1024, "stderr"), ("xxxxx\n", "stderr")]
    for entry in entries_of(path):
        assert parse_time(entry["time"]) > 0 and entry["time"].endswith("Z")


def test_print_logs_tail_timestamps_and_streams(tmp_path):
    path = tmp_path / "c-json.log"
    writer = logs.LogWriter(str(path))
    for i in range(5):
        writer.write("stdout" if i % 2 == 0 else "stderr", f"line {i}\n".encode())
    writer.close()
    out, err = io.BytesIO(), io.BytesIO()
    logs.print_logs(str(path), out, err, tail=3)
    assert out.getvalue() == b"line 2\nline 4\n" and err.getvalue() == b"line 3\n"
    out, err = io.BytesIO(), io.BytesIO()
    logs.print_logs(str(path), out, err, tail=0)
    assert out.getvalue() == err.getvalue() == b""
    out, err = io.BytesIO(), io.BytesIO()
    logs.print_logs(str(path), out, err, tail=1, timestamps=True)
    stamp, text = out.getvalue().decode().split(" ", 1)
    assert text == "line 4\n" and stamp == entries_of(path)[-1]["time"]


def test_follow_reads_what_comes_until_told_to_stop(tmp_path):
    path = tmp_path / "c-json.log"
    writer = logs.LogWriter(str(path))
    writer.write("stdout", b"before\n")
    polls = []

    def still_running():
        polls.append(1)
        if len(polls) == 2:
            writer.write("stdout", b"during\n")
        return len(polls) < 4
    out, err = io.BytesIO(), io.BytesIO()
    logs.print_logs(str(path), out, err, follow=still_running, poll=0.01)
    writer.close()
    assert out.getvalue() == b"before\nduring\n"
    # a half-written last line is not shown until it is complete
    with open(path, "a") as f:
        f.write('{"log": "partial')
    entries, offset = logs.read(str(path))
    assert [e["log"] for e in entries] == ["before\n", "during\n"] and offset < os.path.getsize(path)


# ------------------------------------------------------------------ command line
def test_check_argv_ends_crate_options_at_the_image():
    doc = cli.COMMANDS["run"][0]
    assert cli.check_argv("run", doc, ["-dit", "--name", "x", "-eA=1", "img", "ls", "-la", "--name"], True) == \
        ["-dit", "--name", "x", "-eA=1", "img", "--", "ls", "-la", "--name"]
    assert cli.check_argv("run", doc, ["--net=none", "-w", "/x", "img"], True) == ["--net=none", "-w", "/x", "img",
                                                                                   "--"]
    with pytest.raises(Error, match="unknown option -z"):
        cli.check_argv("run", doc, ["-dz", "img"], True)
    with pytest.raises(Error, match="ambiguous option --r"):
        cli.check_argv("run", doc, ["--r", "img"], True)  # --rm or --runtime
    args, _ = cli.parse("run", ["-it", "--rm", "-e", "A=1", "--env", "B=2", "img", "sh", "-c", "echo -e"])
    assert args["IMAGE"] == "img" and args["COMMAND"] == ["sh", "-c", "echo -e"]
    assert args["--env"] == ["A=1", "B=2"] and args["--tty"] and args["--interactive"] and args["--rm"]
    assert args["--network"] == "host" and args["--runtime"] == "crate-runc"
    args, _ = cli.parse("exec", ["-u", "0", "c1", "ls", "-l", "/"])
    assert args["CONTAINER"] == "c1" and args["COMMAND"] == ["ls", "-l", "/"] and args["--user"] == "0"


def test_parse_signal():
    assert engine.parse_signal("KILL") == engine.parse_signal("sigkill") == engine.parse_signal("9") == 9
    assert engine.parse_signal("SIGQUIT") == 3
    for bad in ("NOPE", "0", "99", ""):
        with pytest.raises(Error):
            engine.parse_signal(bad)


def test_durations_as_docker_prints_them():
    assert formats.duration(0.5) == "Less than a second"
    assert formats.duration(1.5) == "1 second"
    assert formats.duration(59) == "59 seconds"
    assert formats.duration(90) == "About a minute"
    assert formats.duration(3 * 3600) == "3 hours"
    assert formats.duration(3 * 86400) == "3 days"


def test_expand_env(monkeypatch):
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    assert engine.expand_env(["A=1", "FROM_HOST", "UNSET_HERE", "B="]) == ["A=1", "FROM_HOST=h", "B="]
    with pytest.raises(Error):
        engine.expand_env(["=x"])


# ------------------------------------------------------------------ the record store
def test_reserve_resolve_and_prefixes(tmp_path):
    store = Store(str(tmp_path))
    a = store.reserve("web", {"image": "busybox"})
    b = store.reserve(None, {"image": "busybox"})
    assert len(a.id) == 64 and not a.id[:12].isdigit()
    assert b.name and b.name != "web"
    assert store.resolve("web").id == a.id
    assert store.resolve(a.id).id == a.id
    if not b.id.startswith(a.id[:5]):
        assert store.resolve(a.id[:5]).id == a.id
    with pytest.raises(Error, match="already in use"):
        store.reserve("web", {})
    with pytest.raises(Error, match="no such container"):
        store.resolve("nothing")
    common = os.path.commonprefix([a.id, b.id])
    if common:
        with pytest.raises(Error, match="matches 2 containers"):
            store.resolve(common)
    with a.update():
        a.state["status"] = "created"
    assert store.get(a.id).status == "created"
    assert os.stat(os.path.join(a.dir, "container.json")).st_mode & 0o777 == 0o600  # it holds the env
    assert [c.id for c in store.all()] == [b.id, a.id]  # newest first


def _reserve_same_name(root, queue):
    try:
        Store(root).reserve("contested", {})
        queue.put("won")
    except Error:
        queue.put("lost")


def test_names_are_unique_across_processes(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_reserve_same_name, args=(str(tmp_path), queue))
               for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    results = sorted(queue.get(timeout=5) for _ in workers)
    assert results == ["lost"] * 7 + ["won"]
    assert len(Store(str(tmp_path)).all()) == 1


def test_process_identity():
    me = os.getpid()
    assert alive(me, proc_start_time(me))
    assert not alive(me, proc_start_time(me) - 1)  # same pid, another start: a reused pid
    assert not alive(0, None)
    assert parse_time(now()) == pytest.approx(__import__("time").time(), abs=5)
