"""crate-image: pull images into an OCI-layout store and make OCI bundles from them.

Usage:
  crate-image (-h | --help)
  crate-image --version

Options:
  -h --help     Show this help.
  --version     Show the version.

Commands arrive as they are built; see README.md for what works today.
"""
import sys

from docopt import docopt

from crate_image import __version__


def main(argv=None):
    docopt(__doc__, argv=sys.argv[1:] if argv is None else argv, version=f"crate-image version {__version__}")
    return 0
