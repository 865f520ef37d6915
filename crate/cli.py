"""crate: run containers from OCI images (the docker-like front end).

Usage:
  crate [--root=DIR] <command> [<args>...]
  crate (-h | --help)
  crate --version

Commands:
  run       create and start a container from an image (pulled first when missing)
  create    create a container without starting it
  start     start created or exited containers (in the background)
  stop      stop containers: the image's StopSignal, then SIGKILL after a timeout
  kill      send a signal to running containers (SIGKILL by default)
  rm        remove containers
  ps        list containers
  logs      print a container's output
  exec      run a command in a running container
  inspect   show containers or images as JSON
  pull      pull an image from a registry
  images    list images
  rmi       remove images

Options:
  --root=DIR    Store root for images and containers (default: $CRATE_ROOT, else
                /var/lib/crate as root and ~/.local/share/crate otherwise).
  -h --help     Show this help (`crate COMMAND --help` for a command's options).
  --version     Show the version.
"""
import json
import os
import signal
import sys
import time

from crate import __version__
from crate import formats
from crate.errors import Error

COMMANDS = {}

_CONTAINER_OPTIONS = """\
  -i, --interactive      Keep stdin open and pass it to the container.
  -t, --tty              Give the container a terminal (with -i: the user's terminal goes raw).
  --rm                   Remove the container when it exits.
  --name=NAME            Name the container (default: a generated name).
  -e KV, --env=KV        Set an environment variable: KEY=VALUE, or KEY for crate's own value.
  -w DIR, --workdir=DIR  Working directory in the container.
  -u USER, --user=USER   Run as USER[:GROUP], names from the image's /etc/passwd or numbers.
  --entrypoint=CMD       Replace the image's Entrypoint ("" clears it; the image's Cmd goes too).
  --hostname=NAME        Host name in the container (default: the short id).
  --network=MODE         host (the host's network) or none (a network namespace of its own
                         with only a loopback device, down) [default: host]
  --runtime=RUNTIME      Any runc-compatible runtime: a name on PATH or a path
                         [default: crate-runc]
  -q, --quiet            Pull without progress output.
  -h, --help             Show this help.
"""


def command(doc, trailing=False):
    """Register cmd_NAME with its docopt usage; `trailing`: the command line ends in a command
    for the container, whose options are not crate's."""
    def register(handler):
        COMMANDS[handler.__name__[4:]] = (doc, handler, trailing)
        return handler
    return register


# ------------------------------------------------------------------ containers
@command("""Create and start a container from an image (pulled first when missing).

Usage:
  crate run [options] [--env=KV]... IMAGE [--] [COMMAND...]

In the foreground, crate waits and exits with the container's status; -d prints the id and
leaves the container running under its monitor, its output in `crate logs`.

Options:
  -d, --detach           Run in the background and print the container id.
""" + _CONTAINER_OPTIONS, trailing=True)
def cmd_run(a, store):
    from crate import engine
    container = engine.create(store, a["IMAGE"], **_container_options(a))
    if a["--detach"]:
        try:
            engine.start(container)
        except BaseException:
            engine.destroy(container)
            raise
        print(container.id)
        return 0
    return engine.run_attached(container, discard_on_failure=True)


@command("""Create a container from an image (pulled first when missing) without starting it.

Usage:
  crate create [options] [--env=KV]... IMAGE [--] [COMMAND...]

Options:
""" + _CONTAINER_OPTIONS, trailing=True)
def cmd_create(a, store):
    from crate import engine
    container = engine.create(store, a["IMAGE"], **_container_options(a))
    print(container.id)


def _container_options(a):
    entrypoint = None
    if a["--entrypoint"] is not None:
        entrypoint = [a["--entrypoint"]] if a["--entrypoint"] else []
    return dict(name=a["--name"], command=a["COMMAND"] or None, entrypoint=entrypoint, env=a["--env"],
                workdir=a["--workdir"], user=a["--user"], hostname=a["--hostname"], network=a["--network"],
                tty=a["--tty"], stdin=a["--interactive"], auto_remove=a["--rm"], runtime=a["--runtime"],
                quiet=a["--quiet"])


@command("""Start created or exited containers in the background (each under its monitor).

Usage:
  crate start [options] CONTAINER...

Options:
  -h, --help  Show this help.
""")
def cmd_start(a, store):
    from crate import engine
    return _each(store, a["CONTAINER"], engine.start)


@command("""Stop running containers: the image's StopSignal (SIGTERM when it names none), then
SIGKILL when they are still running after the timeout.

Usage:
  crate stop [options] CONTAINER...

Options:
  -t SECONDS, --time=SECONDS  Seconds to wait before SIGKILL [default: 10]
  -h, --help                  Show this help.
""")
def cmd_stop(a, store):
    from crate import engine
    timeout = _number(a["--time"], "--time")
    return _each(store, a["CONTAINER"], lambda c: engine.stop(c, timeout))


@command("""Send a signal to the main process of running containers.

Usage:
  crate kill [options] CONTAINER...

Options:
  -s SIGNAL, --signal=SIGNAL  Signal name or number [default: KILL]
  -h, --help                  Show this help.
""")
def cmd_kill(a, store):
    from crate import engine
    engine.parse_signal(a["--signal"])  # a bad signal is one error, not one per container
    return _each(store, a["CONTAINER"], lambda c: engine.kill(c, a["--signal"]))


@command("""Remove containers: their runtime state, bundle (root filesystem), logs and record.

Usage:
  crate rm [options] CONTAINER...

Options:
  -f, --force  Kill and remove running containers too.
  -h, --help   Show this help.
""")
def cmd_rm(a, store):
    from crate import engine
    return _each(store, a["CONTAINER"], lambda c: engine.remove(c, a["--force"]))


def _each(store, names, action):
    """Do `action` to every named container; print each name done, one error line for each
    failure (exit status 1 when any failed), as docker does."""
    failed = 0
    for name in names:
        try:
            action(store.resolve(name))
            print(name)
            sys.stdout.flush()
        except Error as e:
            _error(e)
            failed += 1
    return 1 if failed else 0


@command("""List containers (running ones; all with -a).

Usage:
  crate ps [options]

Options:
  -a, --all           Show every container, not only running ones.
  -q, --quiet         Print only the ids.
  --no-trunc          Do not shorten ids and commands.
  --format=FORMAT     table, or json (one object per line) [default: table]
  -h, --help          Show this help.
""")
def cmd_ps(a, store):
    from crate import engine
    if a["--format"] not in ("table", "json"):
        raise Error(f"unknown format {a['--format']!r}", "use --format table or --format json")
    rows = []
    for c in store.all():
        engine.refresh(c)
        if a["--all"] or c.status in engine.ACTIVE:
            rows.append(c)
    if a["--quiet"]:
        for c in rows:
            print(c.id if a["--no-trunc"] else c.short())
        return
    now = time.time()
    from crate.containers import parse_time
    if a["--format"] == "json":
        for c in rows:
            created = parse_time(c.data.get("created"))
            print(json.dumps({
                "ID": c.id if a["--no-trunc"] else c.short(), "Names": c.name, "Image": c.data.get("image"),
                "Command": formats.command_text(c, True), "CreatedAt": c.data.get("created"),
                "RunningFor": formats.ago(now - created) if created else "", "State": c.status,
                "Status": formats.status_text(c, now), "ExitCode": c.state.get("exit_code"),
            }))
        return
    table = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES")]
    for c in rows:
        created = parse_time(c.data.get("created"))
        table.append((c.id if a["--no-trunc"] else c.short(), c.data.get("image", ""),
                      formats.command_text(c, a["--no-trunc"]), formats.ago(now - created) if created else "",
                      formats.status_text(c, now), c.name))
    formats.print_table(table)


@command("""Print a container's output (docker's json-file log, kept until the container is removed).

Usage:
  crate logs [options] CONTAINER

Options:
  -f, --follow       Keep printing new output until the container stops.
  --tail=N           Only the last N lines [default: all]
  -t, --timestamps   Prefix each line with its time.
  -h, --help         Show this help.
""")
def cmd_logs(a, store):
    from crate import engine, logs
    container = store.resolve(a["CONTAINER"])
    tail = None if a["--tail"] in ("all", "-1") else _number(a["--tail"], "--tail")

    def running():
        try:
            container.reload()
        except Error:
            return False
        return engine.is_running(container)
    logs.print_logs(container.log_path, sys.stdout.buffer, sys.stderr.buffer, tail=tail,
                    timestamps=a["--timestamps"], follow=running if a["--follow"] else None)


@command("""Run a command in a running container (through the runtime's exec).

Usage:
  crate exec [options] [--env=KV]... CONTAINER [--] COMMAND...

Options:
  -i, --interactive      Pass stdin to the command.
  -t, --tty              Give the command a terminal.
  -e KV, --env=KV        Set an environment variable (KEY=VALUE, or KEY for crate's own value).
  -w DIR, --workdir=DIR  Working directory (default: the container's).
  -u USER, --user=USER   Run as USER[:GROUP], by name (the container's /etc/passwd) or number.
  -h, --help             Show this help.
""", trailing=True)
def cmd_exec(a, store):
    from crate import execute
    container = store.resolve(a["CONTAINER"])
    return execute.run(container, a["COMMAND"], tty=a["--tty"], interactive=a["--interactive"], env=a["--env"],
                        workdir=a["--workdir"], user=a["--user"])


@command("""Show containers or images as JSON (containers first, as docker inspect).

Usage:
  crate inspect [options] NAME...

Options:
  --type=TYPE  container or image (default: whichever NAME is).
  -h, --help   Show this help.
""")
def cmd_inspect(a, store):
    from crate import engine
    from crate_image import api
    from crate_image.errors import NotFound as ImageNotFound
    kind = a["--type"]
    if kind not in (None, "container", "image"):
        raise Error(f"unknown --type {kind!r}", "use --type container or --type image")
    out, failed = [], 0
    for name in a["NAME"]:
        try:
            if kind != "image":
                try:
                    out.append(engine.inspect(store.resolve(name)))
                    continue
                except Error:
                    if kind == "container":
                        raise
            try:
                out.append(api.inspect(name, root=store.root))
            except ImageNotFound:
                raise Error(f"no such {'image' if kind else 'container or image'}: {name}",
                            "see `crate ps -a` and `crate images`") from None
        except Error as e:
            _error(e)
            failed += 1
    print(json.dumps(out, indent=2))
    return 1 if failed else 0


# ------------------------------------------------------------------ images
@command("""Pull an image into the store (docker reference grammar: busybox is
docker.io/library/busybox:latest).

Usage:
  crate pull [options] IMAGE

Options:
  -q, --quiet  No progress output; print only the name.
  -h, --help   Show this help.
""")
def cmd_pull(a, store):
    from crate import engine
    image = engine.pull(a["IMAGE"], store.root, a["--quiet"])
    if not a["--quiet"]:
        sys.stderr.write(f"Digest: {image.source_digest or image.digest}\n")
    print(image.name)


@command("""List the images in the store.

Usage:
  crate images [options]

Options:
  -q, --quiet      Print only the image ids.
  --format=FORMAT  table, or json (one object per line) [default: table]
  -h, --help       Show this help.
""")
def cmd_images(a, store):
    from crate_image import api, reference
    from crate_image.errors import ImageError
    from crate_image.progress import human
    if a["--format"] not in ("table", "json"):
        raise Error(f"unknown format {a['--format']!r}", "use --format table or --format json")
    rows = api.images(root=store.root)
    if a["--quiet"]:
        seen = []
        for r in rows:
            short = (r["id"] or r["digest"])[7:19]
            if short not in seen:
                seen.append(short)
                print(short)
        return
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for r in rows:
        repo, tag = r["name"] or "<none>", "<none>"
        try:
            ref = reference.parse(r["name"])
            repo = reference.Reference(ref.domain, ref.path).familiar()
            tag = ref.tag or "<none>"
        except (ImageError, TypeError):
            pass
        created = formats.image_created(r["created"])
        size = human(r["size"]) if r["size"] is not None else ""
        if a["--format"] == "json":
            print(json.dumps({"Repository": repo, "Tag": tag, "ID": (r["id"] or "")[7:19], "Digest": r["digest"],
                              "CreatedAt": r["created"], "CreatedSince": created, "Size": size,
                              "Platform": r["platform"]}))
        else:
            table.append((repo, tag, (r["id"] or "")[7:19], created, size))
    if a["--format"] == "table":
        formats.print_table(table)


@command("""Remove images (their names; what no other image or container uses is deleted).

Usage:
  crate rmi [options] IMAGE...

Options:
  -f, --force  Remove the name even when a container uses the image (its files stay until
               the container is removed).
  -h, --help   Show this help.
""")
def cmd_rmi(a, store):
    from crate import engine
    from crate_image.errors import ImageError
    failed = 0
    for name in a["IMAGE"]:
        try:
            print(f"Untagged: {engine.remove_image(store, name, a['--force'])}")
        except (Error, ImageError) as e:
            _error(e)
            failed += 1
    return 1 if failed else 0


# ------------------------------------------------------------------ parsing
def _number(value, option):
    try:
        number = int(value)
        if number < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise Error(f"invalid {option} value {value!r}", "give a whole number of 0 or more") from None
    return number


def _options_of(doc):
    from docopt import parse_options
    return parse_options(doc.split("Options:", 1)[1]) if "Options:" in doc else []


def check_argv(name, doc, argv, trailing):
    """Check the options one by one, for one-line errors instead of a usage dump; where the
    command line ends in the container's command, insert "--" after the first argument (IMAGE
    or CONTAINER) so that its options are left alone."""
    options = _options_of(doc)
    out = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + argv[i:]
        if token.startswith("--"):
            flag, eq, _ = token.partition("=")
            found = [o for o in options if o.longer == flag] or \
                [o for o in options if o.longer and o.longer.startswith(flag)]
            if len(found) != 1:
                what = "unknown" if not found else "ambiguous"
                raise Error(f"{what} option {flag} for `crate {name}`", f"see `crate {name} --help`")
            option = found[0]
            if option.argcount and not eq:
                if i + 1 >= len(argv):
                    raise Error(f"option {option.longer} needs a value", f"see `crate {name} --help`")
                out += [token, argv[i + 1]]
                i += 2
                continue
            if not option.argcount and eq:
                raise Error(f"option {option.longer} takes no value", f"see `crate {name} --help`")
            out.append(token)
            i += 1
            continue
        if token.startswith("-") and token != "-":
            out.append(token)
            j = 1
            while j < len(token):
                option = next((o for o in options if o.short == "-" + token[j]), None)
                if option is None:
                    raise Error(f"unknown option -{token[j]} for `crate {name}`", f"see `crate {name} --help`")
                if option.argcount:
                    if j + 1 == len(token):
                        if i + 1 >= len(argv):
                            raise Error(f"option -{token[j]} needs a value", f"see `crate {name} --help`")
                        i += 1
                        out.append(argv[i])
                    break
                j += 1
            i += 1
            continue
        if trailing:
            return out + [token, "--"] + argv[i + 1:]
        out.append(token)
        i += 1
    return out


def parse(name, argv):
    from docopt import DocoptExit, docopt
    doc, handler, trailing = COMMANDS[name]
    argv = check_argv(name, doc, argv, trailing)
    try:
        return docopt(doc, argv=[name] + argv), handler
    except DocoptExit:
        usage = doc.split("Usage:", 1)[1].strip().splitlines()[0].strip()
        raise Error(f"wrong arguments for `crate {name}`", f"usage: {usage}") from None


# ------------------------------------------------------------------ main
def _error(e):
    sys.stderr.write(f"crate: {e}\n")
    sys.stderr.flush()


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C: what was half-made is removed


def main(argv=None):
    from docopt import DocoptExit, docopt
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    if not argv:
        print(__doc__.strip())
        return 0
    try:
        top = docopt(__doc__, argv=argv, options_first=True, version=f"crate version {__version__}")
    except DocoptExit:
        _error(Error(f"bad global options {' '.join(a for a in argv if a.startswith('-'))}",
                     "global options go before the command: crate [--root=DIR] COMMAND ..."))
        return 1
    name = top["<command>"]
    if name not in COMMANDS:
        _error(Error(f"unknown command {name!r}", f"Usage: crate [--root=DIR] COMMAND [ARG...] with COMMAND one of "
                                                  f"{', '.join(COMMANDS)} (crate --help)"))
        return 1
    from crate.containers import Store
    from crate_image.errors import ImageError
    failure = 125 if name in ("run", "create") else 1  # docker run's status for its own errors
    try:
        args, handler = parse(name, top["<args>"])
        store = Store(top["--root"])
        result = handler(args, store)
        sys.stdout.flush()
        return result or 0
    except Error as e:
        _error(e)
        return failure if e.status == 1 else e.status
    except ImageError as e:
        _error(e)
        return failure
    except KeyboardInterrupt:
        _error(Error("interrupted", "nothing half-made was kept"))
        return 130
    except BrokenPipeError:
        with_devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(with_devnull, 1)  # the reader left (crate logs | head): no traceback at exit
        return 0
    except PermissionError as e:
        _error(Error(f"permission denied: {e.filename or e}", "run as root, or use a store you own (--root DIR)"))
        return failure
    except OSError as e:
        _error(Error(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", "check the path and free space"))
        return failure
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("CRATE_DEBUG"):
            raise
        _error(Error(f"internal error: {type(e).__name__}: {e}", "rerun with CRATE_DEBUG=1 and report the traceback"))
        return 70


if __name__ == "__main__":
    sys.exit(main())
