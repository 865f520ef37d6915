"""The --log file: text or json lines ({"level","msg","time"}) the way runc writes them.

Callers such as containerd's shim read the last error's msg from the json log, so every fatal
error is written here as well as to stderr.
"""
import os
import time

_target = {"fd": None, "json": False, "debug": False}


def configure(path=None, json_format=False, debug=False):
    _target["json"] = json_format
    _target["debug"] = debug
    if path:
        _target["fd"] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def timestamp(ns=None):
    """RFC 3339 with nanoseconds in UTC, as Go prints time.Time."""
    ns = time.time_ns() if ns is None else ns
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def _quote(text):
    # a JSON string without importing json (keeps the start-up path lean)
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write(level, msg):
    fd = _target["fd"]
    if fd is None or (level == "debug" and not _target["debug"]):
        return
    now = timestamp()
    if _target["json"]:
        line = '{"level":%s,"msg":%s,"time":%s}\n' % (_quote(level), _quote(msg), _quote(now))
    else:
        line = f'time="{now}" level={level} msg={_quote(msg)}\n'
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        pass


def debug(msg):
    write("debug", msg)


def warning(msg):
    write("warning", msg)
    if _target["fd"] is None:
        os.write(2, f"crate-runc: warning: {msg}\n".encode("utf-8", "replace"))


def error(msg):
    write("error", msg)
