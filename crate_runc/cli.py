"""crate-runc: a runc-compatible OCI runtime.

Usage:
  crate-runc [options] <command> [<args>...]
  crate-runc (-h | --help)
  crate-runc (-v | --version)

Commands:
  create     create a container; its process waits for `start`
  start      start a created container
  run        create and start a container (and wait for it unless --detach)
  state      print the state of a container as JSON
  kill       send a signal to the container's init process (or every process)
  delete     delete a stopped container (or any container with --force)
  list       list containers
  exec       run another process in a container
  ps         list the processes of a container
  pause      suspend a container
  resume     resume a paused container
  update     change a container's resource limits
  events     print a container's resource usage
  spec       write a default config.json
  features   print what this runtime supports, as JSON

Options:
  --root=<dir>        where container state lives (default /run/crate-runc for root,
                      $XDG_RUNTIME_DIR/crate-runc otherwise)
  --log=<file>        also write log lines, errors included, to this file
  --log-format=<fmt>  text or json [default: text]
  --debug             log debug messages too
  --systemd-cgroup    manage cgroups through systemd (not supported: crate-runc uses cgroupfs)
  --rootless=<value>  true, false or auto [default: auto]
  --criu=<path>       accepted for compatibility (checkpoint/restore is not supported)
  -h --help           show this help (`crate-runc <command> --help` for a command)
  -v --version        show the version

Run `crate-runc <command> --help` for a command's options.
"""
import gc
import os
import sys

from crate_runc import Error, SPEC_VERSION, __version__, log

# a short-lived process: cyclic garbage collection would only cost time (~1 ms of pauses while
# the modules load), and not touching objects keeps pages shared with forked children
gc.disable()

COMMANDS = {}


def command(doc):
    """Register a handler with its usage text (docopt syntax, options before arguments)."""
    def register(handler):
        COMMANDS[handler.__name__.rstrip("_")] = (doc, handler)
        return handler
    return register


# ---------------------------------------------------------------- argument parsing
# docopt-ng defines and documents the CLI. Because importing and running it costs ~10 ms per
# call on a path where runc takes ~20 ms for a whole `run`, well-formed command lines are read by
# a small parser built from the same usage texts; anything it does not understand (help, bad
# options, unusual forms) goes to docopt, which prints usage and errors. tests/test_runc_cli.py
# checks that both give the same result on every form clients use.
_grammars = {}


def _grammar(doc):
    if doc in _grammars:
        return _grammars[doc]
    options = {}
    defaults = {}
    section = doc.split("Options:", 1)[1] if "Options:" in doc else ""
    for line in section.splitlines():
        stripped = line.strip()
        if not stripped.startswith("-"):
            continue
        spec, _, description = stripped.partition("  ")
        names, takes_arg = [], False
        for part in spec.replace(",", " ").split():
            if part.startswith("-"):
                name, eq, _ = part.partition("=")
                names.append(name)
                takes_arg = takes_arg or bool(eq)
            elif part.startswith("<"):
                takes_arg = True
        key = next((n for n in names if n.startswith("--")), names[0])
        default = None
        if "[default: " in description:
            default = description.split("[default: ", 1)[1].split("]", 1)[0]
        defaults[key] = default if takes_arg else False
        for name in names:
            options[name] = (key, takes_arg)
    usage = doc.split("Usage:", 1)[1].strip().splitlines()[0].split()
    command = usage[1] if usage[1][0] not in "[<-" else None  # "crate-runc create [options] <id>"
    repeated = {t[1:].split("=", 1)[0] for t in usage if t.startswith("[--") and t.endswith("]...")}
    for name in repeated:  # "[--env=<env>]...": a list of every value given
        defaults[name] = []
    positionals = [(t.strip("[]."), t.startswith("["), "..." in t) for t in usage[2:]
                   if "<" in t and not t.lstrip("[").startswith("-")]
    _grammars[doc] = (command, options, defaults, positionals, repeated)
    return _grammars[doc]


def fast_parse(doc, argv):
    """docopt's answer for argv, or None when argv is not in the plain form this handles."""
    command, options, defaults, positionals, repeated = _grammar(doc)
    result = {k: list(v) if isinstance(v, list) else v for k, v in defaults.items()}
    seen = set()
    i = 0
    if command is not None:
        if not argv or argv[0] != command:
            return None
        result[command] = True
        i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-", "--"):
        name, eq, value = argv[i].partition("=")
        if name not in options or name in ("-h", "--help", "-v", "--version"):
            return None
        key, takes_arg = options[name]
        if key in seen and key not in repeated:
            return None
        seen.add(key)
        if takes_arg:
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
        elif eq:
            return None
        if key in repeated:
            result[key].append(value)
        else:
            result[key] = value if takes_arg else True
        i += 1
    rest = argv[i:]
    if "--" in rest[:1]:
        return None
    if len(rest) > 1 and rest[1] == "--" and "[--]" in doc:
        del rest[1]
        result["--"] = True
    elif "[--]" in doc:
        result["--"] = False
    for name, optional, repeated in positionals:
        if repeated:
            result[name] = rest
            rest = []
        elif rest:
            result[name] = rest.pop(0)
        elif optional:
            result[name] = None
        else:
            return None
    return None if rest else result


def parse(doc, argv, version=None, options_first=False):
    args = fast_parse(doc, argv)
    if args is None:
        from docopt import docopt
        if options_first and "[--]" in doc:
            argv = _end_options_after_first_positional(doc, argv)
        args = docopt(doc, argv=argv, options_first=options_first and "[--]" not in doc, version=version)
    return args


def _end_options_after_first_positional(doc, argv):
    """Insert "--" after a command's first positional (exec's <id>), so that docopt reads what
    follows (the container's command and its own options) as arguments, as runc does."""
    command, options, _, _, _ = _grammar(doc)
    i = 1 if command else 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name, eq, _ = argv[i].partition("=")
        i += 2 if options.get(name, (None, False))[1] and not eq else 1
    if i < len(argv) - 1 and argv[i + 1] != "--":
        return argv[:i + 1] + ["--"] + argv[i + 1:]
    return argv


# ---------------------------------------------------------------- commands
@command("""Create a container from a bundle; its process waits until `crate-runc start`.

Usage:
  crate-runc create [options] <id>

Options:
  -b <dir>, --bundle=<dir>  bundle directory holding config.json [default: .]
  --pid-file=<file>         write the container init's host pid to this file
  --console-socket=<path>   unix socket that receives the pty master when process.terminal is true
  --no-pivot                move the rootfs with MS_MOVE instead of pivot_root
  --no-new-keyring          keep the caller's session keyring
  --preserve-fds=<n>        pass fds 3 to 3+n-1 on to the container [default: 0]
  -h --help                 show this help
""")
def create(g, a):
    from crate_runc import container
    container.create(g["root"], a["<id>"], a["--bundle"], a["--pid-file"], a["--console-socket"],
                     preserve_fds=_count(a["--preserve-fds"], "--preserve-fds"), no_pivot=a["--no-pivot"],
                     no_new_keyring=a["--no-new-keyring"], rootless=g["rootless"])


@command("""Start a created container: its process execs the configured program.

Usage:
  crate-runc start [options] <id>

Options:
  -h --help  show this help
""")
def start(g, a):
    from crate_runc import container
    container.start(g["root"], a["<id>"])


@command("""Create and start a container; without --detach, wait and exit with its status.

Usage:
  crate-runc run [options] <id>

Options:
  -b <dir>, --bundle=<dir>  bundle directory holding config.json [default: .]
  -d, --detach              return once the container is running
  --pid-file=<file>         write the container init's host pid to this file
  --console-socket=<path>   unix socket that receives the pty master when process.terminal is true
  --keep                    do not delete the container after it exits
  --no-pivot                move the rootfs with MS_MOVE instead of pivot_root
  --no-new-keyring          keep the caller's session keyring
  --preserve-fds=<n>        pass fds 3 to 3+n-1 on to the container [default: 0]
  -h --help                 show this help
""")
def run(g, a):
    from crate_runc import container
    return container.run(g["root"], a["<id>"], a["--bundle"], a["--pid-file"], a["--console-socket"],
                         detach=a["--detach"], keep=a["--keep"],
                         preserve_fds=_count(a["--preserve-fds"], "--preserve-fds"),
                         no_pivot=a["--no-pivot"], no_new_keyring=a["--no-new-keyring"], rootless=g["rootless"])


@command("""Print the state of a container as JSON (runtime-spec state, plus rootfs, created, owner).

Usage:
  crate-runc state [options] <id>

Options:
  -h --help  show this help
""")
def state(g, a):
    from crate_runc import container
    _print_json(container.oci_state(g["root"], a["<id>"]))


@command("""Send a signal (default SIGTERM) to the container's init, or with --all to every process.

Usage:
  crate-runc kill [options] <id> [<signal>]

Options:
  -a, --all  signal every process in the container's cgroup
  -h --help  show this help
""")
def kill(g, a):
    from crate_runc import container, signals
    try:
        number = signals.parse(a["<signal>"] or "SIGTERM")
    except ValueError as e:
        raise Error(str(e)) from None
    container.kill(g["root"], a["<id>"], number, a["--all"])


@command("""Delete a container: its state, cgroup and (with --force, when running) its processes.

Usage:
  crate-runc delete [options] <id>

Options:
  -f, --force  kill the container first if it is running or paused
  -h --help    show this help
""")
def delete(g, a):
    from crate_runc import container
    container.delete(g["root"], a["<id>"], a["--force"])


@command("""List containers.

Usage:
  crate-runc list [options]

Options:
  -f <fmt>, --format=<fmt>  table or json [default: table]
  -q, --quiet               print only the container ids
  -h --help                 show this help
""")
def list_(g, a):
    from crate_runc import container
    states = container.list_states(g["root"])
    if a["--quiet"]:
        for s in states:
            print(s["id"])
    elif a["--format"] == "json":
        _print_json(states, indent=False)
    elif a["--format"] == "table":
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root")
                 for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    else:
        raise Error(f"invalid --format {a['--format']!r}: use table or json")


@command("""Write a default config.json (runc's template) into the bundle directory.

Usage:
  crate-runc spec [options]

Options:
  -b <dir>, --bundle=<dir>  where to write config.json [default: .]
  --rootless                a config for running as an unprivileged user
  -h --help                 show this help
""")
def spec(g, a):
    from crate_runc import spec as spec_module
    path = os.path.join(a["--bundle"], "config.json")
    if os.path.exists(path):
        raise Error(f"{path} already exists; remove it first")
    text = _dumps(spec_module.default_spec(a["--rootless"]))
    try:
        with open(path, "x") as f:
            f.write(text + "\n")
    except OSError as e:
        raise Error(f"cannot write {path}: {e.strerror}") from None


@command("""Print what this runtime supports (runtime-spec features document) as JSON.

Usage:
  crate-runc features [options]

Options:
  -h --help  show this help
""")
def features(g, a):
    from crate_runc import features as features_module
    _print_json(features_module.document())


@command("""Run a process in a container (its namespaces, cgroups and security settings).

Usage:
  crate-runc exec [options] [--env=<env>]... [--cap=<cap>]... [--additional-gids=<gid>]... <id> [--] [<command>...]

Options:
  -p <file>, --process=<file>  a runtime-spec process object (JSON) to run instead of <command>
  -d, --detach                 return once the process started
  --pid-file=<file>            write the process's host pid to this file
  --console-socket=<path>      unix socket that receives the pty master when the process has a terminal
  -t, --tty                    give the process a terminal
  --cwd=<dir>                  working directory in the container
  -e <env>, --env=<env>        set an environment variable (KEY=value; repeatable)
  -u <user>, --user=<user>     run as UID[:GID]
  -g <gid>, --additional-gids=<gid>  an additional group (repeatable)
  -c <cap>, --cap=<cap>        add a capability (repeatable)
  --no-new-privs               set no_new_privileges
  --preserve-fds=<n>           pass fds 3 to 3+n-1 on to the process [default: 0]
  --ignore-paused              exec even in a paused container
  -h --help                    show this help
""")
def exec_(g, a):
    from crate_runc import execute
    if a["--process"]:
        process = execute.process_from_file(a["--process"])
    else:
        from crate_runc import container, state as state_module
        base = container.load_config(state_module.Container.load(g["root"], a["<id>"])).get("process")
        process = execute.process_from_options(base, a["<command>"], a["--env"], a["--cwd"], a["--user"],
                                               a["--additional-gids"], a["--tty"], a["--cap"],
                                               a["--no-new-privs"])
    return execute.exec_process(g["root"], a["<id>"], process, a["--detach"], a["--pid-file"],
                                a["--console-socket"], _count(a["--preserve-fds"], "--preserve-fds"),
                                a["--ignore-paused"])


@command("""List the processes of a container: `ps` output limited to them, or their pids as JSON.

Usage:
  crate-runc ps [options] <id> [--] [<ps-args>...]

Options:
  -f <fmt>, --format=<fmt>  table (ps output) or json (pids) [default: table]
  -h --help                 show this help
""")
def ps(g, a):
    from crate_runc import control
    if a["--format"] == "json":
        _print_json(control.pids(g["root"], a["<id>"]), indent=False)
    elif a["--format"] == "table":
        sys.stdout.write(control.ps_table(g["root"], a["<id>"], a["<ps-args>"]))
    else:
        raise Error(f"invalid --format {a['--format']!r}: use table or json")


@command("""Suspend every process of a container (cgroup freezer).

Usage:
  crate-runc pause [options] <id>

Options:
  -h --help  show this help
""")
def pause(g, a):
    from crate_runc import control
    control.pause(g["root"], a["<id>"])


@command("""Resume a paused container.

Usage:
  crate-runc resume [options] <id>

Options:
  -h --help  show this help
""")
def resume(g, a):
    from crate_runc import control
    control.resume(g["root"], a["<id>"])


@command("""Change a running container's resource limits (devices are not changed).

Usage:
  crate-runc update [options] <id>

Options:
  -r <file>, --resources=<file>  a linux.resources JSON object (- reads stdin)
  --memory=<bytes>               memory limit (e.g. 256M, -1 for none)
  --memory-reservation=<bytes>   memory soft limit
  --memory-swap=<bytes>          memory plus swap limit
  --kernel-memory=<bytes>        kernel memory limit (cgroup v1, where the kernel has it)
  --kernel-memory-tcp=<bytes>    kernel TCP buffer limit
  --cpu-shares=<n>               CPU shares (relative weight)
  --cpu-quota=<us>               CPU CFS quota per period
  --cpu-period=<us>              CPU CFS period
  --cpu-rt-period=<us>           CPU realtime period
  --cpu-rt-runtime=<us>          CPU realtime runtime
  --cpuset-cpus=<list>           CPUs to use (e.g. 0-1)
  --cpuset-mems=<list>           memory nodes to use
  --pids-limit=<n>               most processes at once
  --blkio-weight=<n>             block IO weight
  -h --help                      show this help
""")
def update(g, a):
    from crate_runc import control
    control.update(g["root"], a["<id>"], a["--resources"], {flag: a[flag] for flag in control.UPDATE_FLAGS})


@command("""Print a container's resource usage as json lines (one with --stats, else every --interval).

Usage:
  crate-runc events [options] <id>

Options:
  --stats               print the statistics once and exit
  --interval=<seconds>  seconds between statistics [default: 5]
  -h --help             show this help
""")
def events(g, a):
    from crate_runc import control
    try:
        interval = float(a["--interval"])
    except ValueError:
        raise Error(f"invalid --interval {a['--interval']!r}: give seconds") from None
    control.events(g["root"], a["<id>"], a["--stats"], interval, sys.stdout)


# ---------------------------------------------------------------- helpers
def _count(value, option):
    if not str(value).isdigit():
        raise Error(f"invalid {option} value {value!r}: give a number")
    return int(value)


def _dumps(obj, indent=True):
    from crate_runc import fastjson
    return fastjson.dumps_indented(obj) if indent else fastjson.dumps(obj)


def _print_json(obj, indent=True):
    sys.stdout.write(_dumps(obj, indent) + "\n")


def _version_text():
    return f"crate-runc version {__version__}\nspec: {SPEC_VERSION}\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # global options come before the command, whose own options docopt then reads
    top = parse(__doc__, argv, version=_version_text().rstrip(), options_first=True)
    name = top["<command>"]
    log.configure(top["--log"], top["--log-format"] == "json", top["--debug"])
    if name not in COMMANDS:
        return _fail(f"unknown command {name!r}; run `crate-runc --help` for the list")
    if top["--log-format"] not in ("text", "json"):
        return _fail(f"invalid --log-format {top['--log-format']!r}: use text or json")
    if top["--systemd-cgroup"]:
        return _fail("--systemd-cgroup is not supported: crate-runc manages cgroups through cgroupfs; "
                     "configure the caller to use cgroupfs (e.g. podman --cgroup-manager=cgroupfs)")
    doc, handler = COMMANDS[name]
    # a command line that ends in arguments for another program (exec's command, ps's options)
    # takes its own options only before them
    args = parse(doc, [name] + top["<args>"], options_first="[--]" in doc)
    from crate_runc import state as state_module
    g = {"root": top["--root"] or state_module.default_root(), "rootless": top["--rootless"]}
    log.debug(f"{name} {' '.join(top['<args>'])}")
    try:
        result = handler(g, args)
    except Error as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    except Exception as e:  # CgroupError, SeccompError: their own one-line messages
        if type(e).__name__ in ("CgroupError", "SeccompError"):
            return _fail(str(e))
        raise
    sys.stdout.flush()
    return result or 0


def _fail(message):
    log.error(message)
    sys.stdout.flush()
    sys.stderr.write(f"crate-runc: {message}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
