"""crate-image: pull images into an OCI-layout store, unpack them and make OCI bundles.

Usage:
  crate-image [options] pull [--platform=P] [--quiet] [--creds=USER:PASS] IMAGE
  crate-image [options] images [--format=FMT] [--quiet]
  crate-image [options] inspect [--format=FMT] IMAGE
  crate-image [options] rmi IMAGE...
  crate-image [options] prune
  crate-image [options] unpack IMAGE DIR
  crate-image [options] bundle [--copy | --overlay] [--rootless] [--user=U] [--workdir=D] [--env=E]...
              [--entrypoint=CMD] [--hostname=H] [--tty] IMAGE DIR [ARG...]
  crate-image [options] unbundle DIR
  crate-image [options] login [--username=U] [--password=P | --password-stdin] REGISTRY
  crate-image [options] logout REGISTRY
  crate-image (-h | --help)
  crate-image --version

Commands:
  pull      fetch an image (docker reference grammar: busybox = docker.io/library/busybox:latest)
  images    list the images in the store
  inspect   show an image's config, layers and digests (JSON)
  rmi       remove image names; `prune` then frees their blobs and layers
  prune     delete blobs and extracted layers no image or bundle uses
  unpack    write the image's filesystem, flattened, into DIR (like umoci unpack's rootfs)
  bundle    make an OCI bundle in DIR: config.json and rootfs (an overlay mount of the layers as
            root, a flattened copy otherwise or with --copy); ARG... replaces the image's Cmd
  unbundle  unmount and delete a bundle made by `bundle`
  login     check and save credentials for a registry; logout forgets them

Options:
  -h --help              Show this help.
  --version              Show the version.
  --root=DIR             Store root (default: $CRATE_ROOT, else /var/lib/crate as root and
                         ~/.local/share/crate otherwise); the OCI layout is DIR/oci.
  --authfile=FILE        Credentials file (default: containers auth.json, then ~/.docker/config.json).
  --registries-conf=F    Registries file with mirrors and insecure hosts (see README).
  --platform=P           OS/ARCH[/VARIANT] to pull (default: the host's).
  --creds=USER:PASS      Credentials for this pull only.
  -q --quiet             pull: no progress, print only the name; images: only ids.
  --format=FMT           table or json [default: table] (inspect: json always).
  --copy                 Flattened rootfs instead of an overlay mount.
  --overlay              Overlay rootfs (root only).
  --rootless             Rootless config.json (user namespace, no cgroup limits) even as root.
  --user=U               Run as USER[:GROUP] instead of the image's User.
  --workdir=D            Working directory instead of the image's WorkingDir.
  --env=E                Extra KEY=VALUE environment (repeatable).
  --entrypoint=CMD       Replace the image's Entrypoint (and its Cmd).
  --hostname=H           Container hostname [default: crate].
  --tty                  Allocate a terminal (process.terminal).
  --username=U           User name for login.
  --password=P           Password for login (visible in ps: prefer --password-stdin).
  --password-stdin       Read the login password from standard input.
"""
import getpass
import json
import os
import signal
import sys
import time

from docopt import docopt

from crate_image import __version__, api, auth
from crate_image.errors import ImageError
from crate_image.progress import for_terminal, human


def _opt(args, key):
    value = args.get(key)
    return value if value not in (None, False) else None


def _ago(created):
    if not created:
        return "-"
    try:
        stamp = time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    except ValueError:
        return created
    delta = max(time.time() - stamp, 0)
    for unit, seconds in (("years", 365 * 86400), ("months", 30 * 86400), ("weeks", 7 * 86400),
                          ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if delta >= 2 * seconds:
            return f"{int(delta // seconds)} {unit} ago"
    return "just now"


def _image(args):
    """IMAGE is a list in docopt's result because rmi takes several."""
    value = args["IMAGE"]
    return value[0] if isinstance(value, list) else value


def _format(args):
    fmt = args["--format"] or "table"
    if fmt not in ("table", "json"):
        raise ImageError(f"unknown format {fmt!r}", "use --format table or --format json")
    return fmt


def cmd_pull(args, root):
    creds = None
    if args["--creds"]:
        user, sep, password = args["--creds"].partition(":")
        if not sep or not user:
            raise ImageError("--creds needs USER:PASSWORD", "e.g. --creds alice:secret")
        from crate_image.reference import parse
        creds = {parse(_image(args)).domain: auth.Credentials(user, password)}
    progress = for_terminal(quiet=args["--quiet"])
    img = api.pull(_image(args), root=root, platform=args["--platform"], progress=progress, authfile=args["--authfile"],
                   credentials=creds, registries_conf=args["--registries-conf"])
    if not args["--quiet"]:
        print(f"Digest: {img.source_digest or img.digest}", file=sys.stderr)
    print(img.name)


def cmd_images(args, root):
    rows = api.images(root=root)
    if args["--quiet"]:
        for r in rows:
            print((r["id"] or r["digest"])[7:19])
        return
    if _format(args) == "json":
        print(json.dumps(rows, indent=2))
        return
    table = [("NAME", "IMAGE ID", "CREATED", "SIZE", "PLATFORM")]
    for r in rows:
        table.append((r["name"] or "<none>", (r["id"] or "")[7:19], _ago(r["created"]),
                      human(r["size"]) if r["size"] is not None else "-", r["platform"] or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_inspect(args, root):
    _format(args)
    print(json.dumps(api.inspect(_image(args), root=root), indent=2))


def cmd_rmi(args, root):
    failed = 0
    for name in args["IMAGE"]:
        try:
            print(f"Untagged: {api.remove(name, root=root)}")
        except ImageError as e:
            print(f"crate-image: {e}", file=sys.stderr)
            failed += 1
    if failed:
        raise SystemExit(1)


def cmd_prune(args, root):
    done = api.prune(root=root)
    print(f"Deleted {done['blobs']} blobs and {done['layers']} extracted layers; freed {human(done['bytes'])}")


def cmd_unpack(args, root):
    print(api.unpack(_image(args), args["DIR"], root=root))


def cmd_bundle(args, root):
    mode = "copy" if args["--copy"] else "overlay" if args["--overlay"] else "auto"
    entrypoint = None
    if args["--entrypoint"] is not None:
        entrypoint = [args["--entrypoint"]] if args["--entrypoint"] else []
    command = args["ARG"][1:] if args["ARG"][:1] == ["--"] else args["ARG"]  # docopt keeps the "--"
    b = api.make_bundle(_image(args), args["DIR"], root=root, rootless=True if args["--rootless"] else None,
                        rootfs=mode, args=command or None, entrypoint=entrypoint, env=args["--env"] or None,
                        user=args["--user"], workdir=args["--workdir"], hostname=args["--hostname"] or "crate",
                        terminal=args["--tty"])
    print(b.path)


def cmd_unbundle(args, root):
    api.remove_bundle(args["DIR"], root=root)


def cmd_login(args, root):
    registry = args["REGISTRY"]
    username = args["--username"]
    if not username:
        if not sys.stdin.isatty():
            raise ImageError("no user name", "pass --username")
        username = input("Username: ").strip()
    if args["--password-stdin"]:
        password = sys.stdin.readline().rstrip("\n")
    elif args["--password"] is not None:
        password = args["--password"]
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise ImageError("no password", "pass --password-stdin and write it to standard input")
    path = api.login(registry, username, password, authfile=args["--authfile"],
                     registries_conf=args["--registries-conf"])
    print(f"Login Succeeded (credentials saved in {path})")


def cmd_logout(args, root):
    changed = api.logout(args["REGISTRY"], authfile=args["--authfile"])
    if not changed:
        raise ImageError(f"not logged in to {args['REGISTRY']}", "nothing to do")
    print(f"Removed login credentials for {args['REGISTRY']}")


COMMANDS = ["pull", "images", "inspect", "rmi", "prune", "unpack", "bundle", "unbundle", "login", "logout"]


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temp files and half-made dirs are removed


def main(argv=None):
    signal.signal(signal.SIGTERM, _terminate)
    args = docopt(__doc__, argv=sys.argv[1:] if argv is None else argv, version=f"crate-image version {__version__}")
    root = args["--root"]
    try:
        for name in COMMANDS:
            if args.get(name):
                globals()[f"cmd_{name}"](args, root)
                break
        return 0
    except ImageError as e:
        print(f"crate-image: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crate-image: interrupted; nothing half-made was kept", file=sys.stderr)
        return 130
    except PermissionError as e:
        print(f"crate-image: permission denied: {e.filename}; run as root or choose a store you own (--root DIR)",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"crate-image: {e.strerror or e}: {e.filename or ''}; check the path and free space", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("CRATE_IMAGE_DEBUG"):
            raise
        print(f"crate-image: internal error: {type(e).__name__}: {e}; rerun with CRATE_IMAGE_DEBUG=1 and "
              "report the traceback", file=sys.stderr)
        return 70
