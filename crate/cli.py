"""crate: run containers from OCI images (the docker-like front end).

Usage:
  crate (-h | --help)
  crate --version

Options:
  -h --help     Show this help.
  --version     Show the version.

Commands arrive as they are built; see README.md for what works today.
"""
import sys

from docopt import docopt

from crate import __version__


def main(argv=None):
    docopt(__doc__, argv=sys.argv[1:] if argv is None else argv, version=f"crate version {__version__}")
    return 0
