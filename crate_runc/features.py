"""The runtime-spec features document (`crate-runc features`): what this runtime implements."""
from crate_runc import SPEC_VERSION, capabilities, linux, mounts, namespaces


def document():
    from crate_runc import cgroups, seccomp
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted(set(mounts.FLAG_OPTIONS) | set(mounts.PROPAGATION) | {"tmpcopyup"}),
        "linux": {
            "namespaces": sorted(namespaces.FLAGS),
            "capabilities": list(capabilities.NAMES[:linux.last_cap() + 1]),
            "cgroup": cgroups.features(),
            "seccomp": seccomp.features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runc.checkpoint.enabled": "false",
                        "io.github.crate.runtime": "crate-runc"},
    }
