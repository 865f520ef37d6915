"""Container logs in docker's json-file format: one {"log", "stream", "time"} object per line.

The monitor writes them; `crate logs` reads them (--tail N, -f until the container stops). As
docker does, output is split at newlines (each entry keeps its "\\n"), a line longer than 16 kB is
cut into several entries, and what is left without a newline when a stream ends becomes an entry
of its own. Bytes that are not UTF-8 are replaced (JSON strings are text). No rotation: the file
grows with the container's output until the container is removed.
"""
import json
import os
import time

from crate.containers import now

MAX_LINE = 16 * 1024


class LogWriter:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.pending = {}

    def write(self, stream, data):
        """Log bytes read from `stream` ("stdout" or "stderr")."""
        buffer = self.pending.get(stream, b"") + data
        lines = []
        while True:
            cut = buffer.find(b"\n")
            if cut < 0 or cut >= MAX_LINE:
                if len(buffer) >= MAX_LINE:
                    lines.append(buffer[:MAX_LINE])
                    buffer = buffer[MAX_LINE:]
                    continue
                break
            lines.append(buffer[:cut + 1])
            buffer = buffer[cut + 1:]
        self.pending[stream] = buffer
        self._emit(stream, lines)

    def flush(self, stream=None):
        """Write out what is pending without a newline (the stream ended)."""
        for name in [stream] if stream else list(self.pending):
            rest = self.pending.pop(name, b"")
            if rest:
                self._emit(name, [rest])

    def _emit(self, stream, lines):
        if not lines:
            return
        stamp = now()
        out = "".join(json.dumps({"log": line.decode("utf-8", "replace"), "stream": stream, "time": stamp},
                                 ensure_ascii=False) + "\n" for line in lines)
        data = out.encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]

    def close(self):
        self.flush()
        os.close(self.fd)


def read(path, offset=0):
    """(entries, offset after the last complete line) from `offset` on."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    entries = []
    for line in data[:end].splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries, offset + end


def show(entries, out, err, timestamps=False):
    """Write entries to the binary streams out (stdout entries) and err (stderr entries)."""
    for entry in entries:
        text = entry.get("log", "")
        if timestamps:
            text = f"{entry.get('time', '')} {text}"
        target = err if entry.get("stream") == "stderr" else out
        target.write(text.encode("utf-8", "surrogateescape"))
    out.flush()
    err.flush()


def print_logs(path, out, err, tail=None, timestamps=False, follow=None, poll=0.1):
    """crate logs: the last `tail` entries (all when None), then, when `follow` is a callable
    saying whether the container still runs, what is written next until it stops."""
    entries, offset = read(path)
    if tail is not None:
        entries = entries[len(entries) - tail:] if tail > 0 else []
    show(entries, out, err, timestamps)
    if follow is None:
        return
    while True:
        running = follow()
        entries, offset = read(path, offset)
        show(entries, out, err, timestamps)
        if not running:
            return  # read once more after it stopped: the monitor writes the last lines first
        if not entries:
            time.sleep(poll)
