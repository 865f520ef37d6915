"""The container store: one directory per container under <root>/containers.

    <root>/containers/.lock             held while a name is taken or given back
    <root>/containers/<id>/container.json   the record (written whole: temp file + rename)
    <root>/containers/<id>/bundle/      config.json + rootfs (crate_image.api.make_bundle)
    <root>/containers/<id>/<id>-json.log    the container's output (docker's json-file format)
    <root>/containers/<id>/runtime.log  the runtime's --log (json lines; errors are read from it)
    <root>/containers/<id>/monitor.log  what the detached monitor had to say

<root> is the image store's root (--root, $CRATE_ROOT, /var/lib/crate as root, else
~/.local/share/crate). Ids are 64 hex digits; a container is named by its id, its name, or an id
prefix that matches only it. Changes to one container happen under an flock on its directory;
names are unique because they are only taken under the store lock.
"""
import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import time

from crate.errors import Error, NotFound

RECORD = "container.json"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
HEX = frozenset("0123456789abcdef")
_HELD = {}  # container dir -> [fd, depth]: the locks this process holds

ADJECTIVES = """admiring agitated amazing angry awesome blissful bold brave busy charming clever cool
compassionate confident cranky dazzling determined distracted dreamy eager ecstatic elastic elated
elegant eloquent epic fervent festive flamboyant focused friendly frosty gallant gifted goofy gracious
happy hardcore heuristic hopeful hungry infallible inspiring jolly jovial keen kind laughing loving lucid
magical modest musing mystifying naughty nervous nice nifty nostalgic objective optimistic peaceful
pedantic pensive practical priceless quirky quizzical relaxed reverent romantic sad serene sharp silly
sleepy stoic strange stupefied suspicious sweet tender thirsty trusting unruffled upbeat vibrant
vigilant vigorous wizardly wonderful xenodochial youthful zealous zen""".split()
SURNAMES = """agnesi albattani allen almeida archimedes ardinghelli aryabhata austin babbage banach
bardeen bartik bassi bell bhabha bhaskara blackwell bohr booth borg bose boyd brahmagupta brattain
brown carson cerf chandrasekhar chatelet clarke colden cori cray curie darwin davinci dijkstra dubinsky
easley edison einstein elion engelbart euclid euler fermat fermi feynman franklin galileo gates
goldberg goldstine goldwasser golick goodall hamilton hawking heisenberg hermann hodgkin hoover hopper
hypatia jackson jang jennings jepsen johnson joliot jones kalam kare keller kepler khorana kilby
kirch knuth kowalevski lalande lamarr lamport leakey leavitt lewin lichterman liskov lovelace lumiere
mahavira mayer mccarthy mcclintock mclean mcnulty meitner mendel mendeleev minsky mirzakhani morse
murdock napier nash neumann newton nobel noether northcutt noyce panini pare pascal pasteur payne
perlman pike poincare ptolemy raman ramanujan ride ritchie roentgen rosalind saha sammet shamir
shannon shaw shirley shockley sinoussi snyder spence stallman stonebraker swanson swartz tesla
thompson torvalds turing varahamihira visvesvaraya volhard wescoff wiles williams wilson wing wozniak
wright yalow yonath""".split()


def now():
    """UTC time as docker writes it: RFC 3339 with nanoseconds."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def parse_time(text):
    """Seconds since the epoch for a time written by now() (None for none)."""
    if not text:
        return None
    import calendar
    head, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def proc_start_time(pid):
    """Field 22 of /proc/PID/stat, or None when there is no such process or it is a zombie."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid, start_time):
    """The process `pid` that started at `start_time` still runs (a reused pid does not count)."""
    return bool(pid) and start_time is not None and proc_start_time(pid) == start_time


class Container:
    """One container directory and its record (self.data)."""

    def __init__(self, store, container_id, data=None):
        self.store = store
        self.id = container_id
        self.dir = os.path.join(store.dir, container_id)
        self.data = data or {}

    def __repr__(self):
        return f"<Container {self.id[:12]} {self.name}>"

    # -- paths
    @property
    def bundle(self):
        return os.path.join(self.dir, "bundle")

    @property
    def log_path(self):
        return os.path.join(self.dir, f"{self.id}-json.log")

    @property
    def runtime_log(self):
        return os.path.join(self.dir, "runtime.log")

    @property
    def monitor_log(self):
        return os.path.join(self.dir, "monitor.log")

    @property
    def pid_file(self):
        return os.path.join(self.dir, "init.pid")

    # -- fields
    @property
    def name(self):
        return self.data.get("name", "")

    @property
    def state(self):
        return self.data.setdefault("state", {})

    @property
    def status(self):
        return self.state.get("status", "created")

    def short(self):
        return self.id[:12]

    # -- persistence
    def reload(self):
        try:
            with open(os.path.join(self.dir, RECORD), encoding="utf-8") as f:
                self.data = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"container {self.id[:12]} no longer exists", "see `crate ps -a`") from None
        except ValueError as e:
            raise Error(f"container {self.id[:12]} has an unreadable record ({e})",
                        f"remove it with `crate rm -f {self.id[:12]}`") from None
        return self

    def save(self):
        path = os.path.join(self.dir, RECORD)
        tmp = os.path.join(self.dir, f".{RECORD}.{os.getpid()}")
        # 0600: the record holds the container's environment, which may carry secrets
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w",
                  encoding="utf-8") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, path)

    @contextlib.contextmanager
    def lock(self):
        """An exclusive lock on this container across processes (an flock on its directory);
        re-entrant within this process."""
        held = _HELD.get(self.dir)
        if held is not None:
            held[1] += 1
            try:
                yield self
            finally:
                held[1] -= 1
            return
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"container {self.id[:12]} no longer exists", "see `crate ps -a`") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[self.dir] = [fd, 1]
            yield self
        finally:
            _HELD.pop(self.dir, None)
            os.close(fd)

    @contextlib.contextmanager
    def update(self):
        """Read the record under the lock, let the caller change self.data, write it back
        (not written when the body raises)."""
        with self.lock():
            self.reload()
            yield self.data
            self.save()

    def set_state(self, **changes):
        with self.update():
            self.state.update(changes)


class Store:
    """The containers directory of one store root."""

    def __init__(self, root=None):
        from crate_image.config import default_root
        self.root = os.path.abspath(root or default_root())
        self.dir = os.path.join(self.root, "containers")

    def ensure(self):
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        os.makedirs(self.dir, mode=0o711, exist_ok=True)
        return self

    @contextlib.contextmanager
    def lock(self):
        self.ensure()
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading
    def ids(self):
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if len(n) == 64 and HEX.issuperset(n))

    def get(self, container_id):
        return Container(self, container_id).reload()

    def all(self):
        """Every container with a readable record, newest first."""
        out = []
        for container_id in self.ids():
            try:
                out.append(self.get(container_id))
            except Error:
                continue  # removed (or being made) while we looked
        out.sort(key=lambda c: c.data.get("created", ""), reverse=True)
        return out

    def find_name(self, name):
        for c in self.all():
            if c.name == name:
                return c
        return None

    def resolve(self, text):
        """The container named by a full id, a name, or an id prefix that matches one container."""
        if not text:
            raise NotFound("no container named ''", "give a container name or id (see `crate ps -a`)")
        ids = self.ids()
        if text in ids:
            return self.get(text)
        by_name = self.find_name(text)
        if by_name is not None:
            return by_name
        if HEX.issuperset(text):
            matches = [i for i in ids if i.startswith(text)]
            if len(matches) == 1:
                return self.get(matches[0])
            if len(matches) > 1:
                shown = ", ".join(m[:12] for m in matches[:4]) + (", ..." if len(matches) > 4 else "")
                raise Error(f"id prefix {text!r} matches {len(matches)} containers ({shown})",
                            "give more characters of the id, or the name")
        raise NotFound(f"no such container: {text}", "see `crate ps -a` for names and ids")

    # -- taking and giving back names
    def check_name(self, name):
        if not NAME_RE.match(name) or len(name) > 253:
            raise Error(f"invalid container name {name!r}",
                        "use letters, digits, '_', '.' and '-', starting with a letter or digit")
        other = self.find_name(name)
        if other is not None:
            raise Error(f"the name {name!r} is already in use by container {other.short()}",
                        f"remove it (`crate rm {name}`) or choose another name")

    def reserve(self, name, data):
        """Make a new container directory and record (status "creating") under a unique id and
        name; a generated name when `name` is None. Returns the Container."""
        with self.lock():
            if name is not None:
                self.check_name(name)
            else:
                taken = {c.name for c in self.all()}
                name = _generate_name(taken)
            while True:
                container_id = secrets.token_hex(32)
                # as docker: a short id that is all digits would read as a number
                if not container_id[:12].isdigit() and not os.path.exists(os.path.join(self.dir, container_id)):
                    break
            container = Container(self, container_id, dict(data, id=container_id, name=name, created=now()))
            container.data["state"] = dict(data.get("state") or {}, status="creating")
            os.mkdir(container.dir, 0o711)
            try:
                container.save()
            except BaseException:
                remove_dir(container.dir)
                raise
        return container


def _generate_name(taken):
    rng = random.SystemRandom()
    for attempt in range(100):
        name = f"{rng.choice(ADJECTIVES)}_{rng.choice(SURNAMES)}"
        if attempt > 10:
            name += str(rng.randint(0, 99))
        if name not in taken:
            return name
    return "crate_" + secrets.token_hex(4)


def remove_dir(path):
    """rm -rf for what crate itself wrote (the bundle is removed through crate_image first)."""
    import shutil
    shutil.rmtree(path, ignore_errors=True)
