"""crate_runc: a runc-compatible OCI runtime.

The library behind `crate-runc`: cli (argument parsing, one handler per command), state (state
directory), spec (config.json), container (lifecycle), spawn (parent side: fork, namespaces, sync),
init (container side: rootfs, identity, exec), mounts, namespaces, capabilities, console, hooks,
cgroups, seccomp, and linux (the syscalls Python's os module lacks).
"""
__version__ = "0.1.0"
SPEC_VERSION = "1.2.1"  # the runtime-spec release crate-runc implements (schemas/ is pinned to it)


class Error(Exception):
    """A failure to report to the caller as one line; the message names the problem and the fix."""
