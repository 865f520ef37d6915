"""Pull progress: a bar per layer on a terminal, one line per event otherwise, nothing with --quiet."""
import sys
import threading
import time


def human(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000


class Progress:
    """Silent base: also the --quiet reporter."""

    def message(self, text):
        pass

    def warn(self, text):
        """Warnings reach stderr even with --quiet."""
        sys.stderr.write(f"crate-image: warning: {text}\n")
        sys.stderr.flush()

    def layer(self, digest, size, state):
        """state: 'waiting', 'exists', 'downloading', 'extracting', 'done'"""

    def advance(self, digest, n):
        pass

    def close(self):
        pass


class LineProgress(Progress):
    """For pipes and logs: one line per layer event, like docker without a tty."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def _print(self, text):
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text):
        self._print(text)

    def layer(self, digest, size, state):
        label = {"waiting": "Pulling fs layer", "exists": "Already exists", "downloading": "Downloading",
                 "extracting": "Extracting", "done": "Pull complete"}.get(state, state)
        if state in ("waiting", "exists", "done"):
            self._print(f"{digest[7:19]}: {label}" + (f" ({human(size)})" if size and state == "waiting" else ""))


class BarProgress(Progress):
    """For a terminal: one live bar per layer, redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.rows = {}    # digest -> [size, done, state]
        self.order = []
        self.drawn = 0
        self.last = 0.0

    def message(self, text):
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw(force=True)

    def layer(self, digest, size, state):
        with self.lock:
            if digest not in self.rows:
                self.rows[digest] = [size or 0, 0, state]
                self.order.append(digest)
            row = self.rows[digest]
            row[2] = state
            if state in ("done", "exists"):
                row[1] = row[0]
            self._draw(force=True)

    def advance(self, digest, n):
        with self.lock:
            row = self.rows.get(digest)
            if row:
                row[1] += n
                self._draw()

    def _erase(self):
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0

    def _draw(self, force=False):
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        self._erase()
        for digest in self.order:
            size, done, state = self.rows[digest]
            label = {"waiting": "Waiting", "exists": "Already exists", "downloading": "Downloading",
                     "extracting": "Extracting", "done": "Pull complete"}.get(state, state)
            if state == "downloading" and size:
                filled = int(self.WIDTH * min(done, size) / size)
                bar = "[" + "=" * filled + (">" if filled < self.WIDTH else "") + " " * (self.WIDTH - filled - 1) + "]"
                line = f"{digest[7:19]}: {label} {bar} {human(done)}/{human(size)}"
            else:
                line = f"{digest[7:19]}: {label}"
            self.stream.write(line + "\n")
        self.drawn = len(self.order)
        self.stream.flush()

    def close(self):
        with self.lock:
            self._draw(force=True)


def for_terminal(quiet=False, stream=None):
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    return BarProgress(stream) if stream.isatty() else LineProgress(stream)
