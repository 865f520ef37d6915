"""crate-runc: a runc-compatible OCI runtime.

Usage:
  crate-runc (-h | --help)
  crate-runc --version

Options:
  -h --help     Show this help.
  --version     Show the version.

Commands arrive as they are built; see README.md for what works today.
"""
import sys

from docopt import docopt

from crate_runc import __version__


def main(argv=None):
    docopt(__doc__, argv=sys.argv[1:] if argv is None else argv, version=f"crate-runc version {__version__}")
    return 0
