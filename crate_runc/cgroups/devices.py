"""Device rules: linux.resources.devices (plus runc's default allowed devices) applied to the devices
cgroup (v1: writes to devices.allow/devices.deny) or as an eBPF program attached to the cgroup (v2).

An Emulator models what a devices cgroup allows, as the kernel's v1 controller does; v1 writes the
transition from what devices.list shows, v2 compiles the same state into runc's program. ctypes comes
in (with crate_runc/cgroups/bpf.py) only when a v2 filter is attached.

Needed to make a manager and to set resources; a manager restored from state.json needs it only when
linux.devices replaced one of the default devices (defaults_from_state).
"""
import os

from crate_runc.cgroups import CgroupError, fs
from crate_runc.cgroups.paths import running_in_userns

_R, _W, _M = 1, 2, 4


class Rule(tuple):
    """(type, major, minor, perms, allow); a plain tuple subclass because typing is slow to import."""

    __slots__ = ()

    def __new__(cls, type, major, minor, perms, allow):
        return tuple.__new__(cls, (type, major, minor, perms, allow))

    type = property(lambda self: self[0])
    major = property(lambda self: self[1])
    minor = property(lambda self: self[2])
    perms = property(lambda self: self[3])
    allow = property(lambda self: self[4])

    def __repr__(self):
        return f"Rule{tuple(self)!r}"

    @classmethod
    def parse(cls, text, allow=True):
        """The inverse of cgroup_string: "c 1:3 rwm"."""
        kind, numbers, perms = text.split()
        major, minor = (-1 if n == "*" else int(n) for n in numbers.split(":"))
        return cls(kind, major, minor, perms, allow)

    def cgroup_string(self):
        major = "*" if self.major == -1 else str(self.major)
        minor = "*" if self.minor == -1 else str(self.minor)
        return f"{self.type} {major}:{minor} {self.perms}"


def perm_bits(perms):
    return (_R if "r" in perms else 0) | (_W if "w" in perms else 0) | (_M if "m" in perms else 0)


def perm_string(bits):
    return ("r" if bits & _R else "") + ("w" if bits & _W else "") + ("m" if bits & _M else "")


class DeviceRuleError(ValueError):
    pass


class Emulator:
    """The state of a devices cgroup: default allow/deny plus exceptions {(type, major, minor): bits}."""

    def __init__(self, default_allow=False, rules=None):
        self.default_allow = default_allow
        self.rules = dict(rules or {})

    def __eq__(self, other):
        return (isinstance(other, Emulator) and self.default_allow == other.default_allow
                and self.rules == other.rules)

    def __repr__(self):
        return f"Emulator(default_allow={self.default_allow}, rules={self.rules})"

    @classmethod
    def from_rules(cls, rules):
        emu = cls()
        for rule in rules:
            emu.apply(rule)
        return emu

    @classmethod
    def from_list(cls, text):
        """The state shown by a v1 devices.list (which lists allowed entries only)."""
        emu = cls()
        for line in text.splitlines():
            fields = line.replace(":", " ").split()
            if len(fields) != 4:
                raise DeviceRuleError(f"malformed devices.list line {line!r}")
            kind, major, minor, perms = fields
            if kind == "a":  # "a *:* rwm": the cgroup allows everything
                emu._reset(True)
                continue
            if kind not in ("b", "c") or perm_string(perm_bits(perms)) != perms or not perms:
                raise DeviceRuleError(f"malformed devices.list line {line!r}")
            emu._allow(kind, -1 if major == "*" else int(major), -1 if minor == "*" else int(minor),
                       perm_bits(perms))
        return emu

    def _reset(self, default_allow):
        self.default_allow = default_allow
        self.rules = {}

    def apply(self, rule):
        if rule.type == "a":
            self._reset(rule.allow)
        elif rule.allow:
            self._allow(rule.type, rule.major, rule.minor, perm_bits(rule.perms))
        else:
            self._deny(rule.type, rule.major, rule.minor, perm_bits(rule.perms))

    def _allow(self, kind, major, minor, bits):
        if self.default_allow:
            self._remove(kind, major, minor, bits)
        else:
            self._add(kind, major, minor, bits)

    def _deny(self, kind, major, minor, bits):
        if self.default_allow:
            self._add(kind, major, minor, bits)
        else:
            self._remove(kind, major, minor, bits)

    def _add(self, kind, major, minor, bits):
        key = (kind, major, minor)
        self.rules[key] = self.rules.get(key, 0) | bits

    def _remove(self, kind, major, minor, bits):
        key = (kind, major, minor)
        # the kernel silently ignores removing part of a wildcard exception; runc refuses instead,
        # so a rule never looks effective while it is not
        for partial in ((kind, -1, minor), (kind, major, -1), (kind, -1, -1)):
            if partial != key and self.rules.get(partial, 0) & bits:
                rule = Rule(kind, major, minor, perm_string(bits), True).cgroup_string()
                wide = Rule(*partial, perm_string(self.rules[partial]), True).cgroup_string()
                raise DeviceRuleError(f"rule '{rule}' would punch a hole in the wildcard rule "
                                      f"'{wide}', which the devices cgroup cannot do")
        left = self.rules.get(key, 0) & ~bits
        if left:
            self.rules[key] = left
        else:
            self.rules.pop(key, None)

    def transition(self, target):
        """The rules that turn this state into target, disrupting as little as possible."""
        out = []
        old = self.rules
        # devices.list cannot show deny exceptions, so an allow-all source needs a reset as well
        if self.default_allow or self.default_allow != target.default_allow:
            out.append(Rule("a", -1, -1, "rwm", target.default_allow))
            old = {}
        for (kind, major, minor), bits in _ordered(old):
            dropped = bits & ~target.rules.get((kind, major, minor), 0)
            if dropped:
                out.append(Rule(kind, major, minor, perm_string(dropped), target.default_allow))
        for (kind, major, minor), bits in _ordered(target.rules):
            gained = bits & ~old.get((kind, major, minor), 0)
            if gained:
                out.append(Rule(kind, major, minor, perm_string(gained), not target.default_allow))
        return out

    def minimal_rules(self):
        """The rules that reach this state from deny-all (runc's Emulator.Rules)."""
        return Emulator(False).transition(self)


def _ordered(rules):
    # runc sorts by (major, minor, type) so that the same rules are always written
    return sorted(rules.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))


# runc's specconv.AllowedDevices, appended after the config's own rules; an entry with a path is
# left out when linux.devices lists the same path (the config's device then takes priority)
_ALLOWED_DEVICES = (
    (None, Rule("c", -1, -1, "m", True)),
    (None, Rule("b", -1, -1, "m", True)),
    ("/dev/null", Rule("c", 1, 3, "rwm", True)),
    ("/dev/random", Rule("c", 1, 8, "rwm", True)),
    ("/dev/full", Rule("c", 1, 7, "rwm", True)),
    ("/dev/tty", Rule("c", 5, 0, "rwm", True)),
    ("/dev/zero", Rule("c", 1, 5, "rwm", True)),
    ("/dev/urandom", Rule("c", 1, 9, "rwm", True)),
    (None, Rule("c", 136, -1, "rwm", True)),   # /dev/pts/*
    (None, Rule("c", 5, 2, "rwm", True)),      # /dev/ptmx
    (None, Rule("c", 10, 200, "rwm", True)),   # /dev/net/tun
)


def default_device_rules(linux_devices):
    """runc's default allowed device rules, minus the paths linux.devices redefines."""
    taken = {d.get("path") for d in linux_devices if isinstance(d, dict)}
    return [rule for path, rule in _ALLOWED_DEVICES if path is None or path not in taken]


def with_defaults(rules, defaults):
    """The config's rules, then the default ones (None: runc's own, as a manager restored from state)."""
    return rules + (default_device_rules([]) if defaults is None else defaults)


def defaults_to_state(defaults, d):
    """Record the default rules in the state dict d, unless they are runc's own (the usual case)."""
    if defaults is not None and defaults != default_device_rules([]):
        d["default_devices"] = [r.cgroup_string() for r in defaults]


def defaults_from_state(d):
    """The default rules a state dict recorded under "default_devices"; None (runc's own) when it
    recorded none."""
    if "default_devices" not in d:  # only when linux.devices redefined one of runc's defaults
        return None
    return [Rule.parse(t) for t in d["default_devices"]]


def emulate(rules, rootless):
    """The devices cgroup state rules lead to; None when rootless and the cgroup cannot express
    them (runc ignores device errors for rootless containers)."""
    try:
        return Emulator.from_rules(rules)
    except DeviceRuleError as e:
        if rootless:
            return None
        raise CgroupError(f"linux.resources.devices: {e}") from None


def write_v1(path, target, rootless):
    """Turn the v1 devices cgroup at path into target with the fewest writes, then check it."""
    try:
        current = Emulator.from_list(fs.read(path, "devices.list"))
        for rule in current.transition(target):
            fs.write_raw(path, "devices.allow" if rule.allow else "devices.deny", rule.cgroup_string())
        after = Emulator.from_list(fs.read(path, "devices.list"))
    except (OSError, DeviceRuleError) as e:
        if rootless:
            return  # runc ignores device errors for rootless containers
        reason = os.strerror(e.errno) if isinstance(e, OSError) else str(e)
        raise CgroupError(f"cannot set linux.resources.devices in {path}: {reason}") from None
    if (not target.default_allow and after != target) or after.default_allow != target.default_allow:
        if not rootless:
            raise CgroupError(f"the devices cgroup {path} does not match linux.resources.devices after "
                              "writing it (a rule the kernel ignored?); check the device rules")


def attach_v2(path, emulator, rules, rootless):
    """Attach runc's eBPF device filter for emulator (made from rules) to the cgroup2 directory path,
    replacing the one there."""
    try:
        from crate_runc.cgroups import bpf
        program = bpf.device_filter(emulator.minimal_rules(), emulator.default_allow)
        fd = os.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            bpf.set_cgroup_device_filter(fd, program)
        finally:
            os.close(fd)
    except OSError as e:
        # runc ignores this when rootless, in a user namespace, or when every rule allows rwm
        if rootless or running_in_userns() or all(r.allow and r.perms == "rwm" for r in rules):
            return
        raise CgroupError(f"cannot attach the eBPF device filter for linux.resources.devices to "
                          f"{path}: {e.strerror}; crate-runc needs CAP_BPF/CAP_SYS_ADMIN for it") from None
