"""Host platform, --platform parsing and choosing a manifest from an index or manifest list."""
import platform as _platform
from dataclasses import dataclass

from crate_image.errors import ImageError, NotFound

# uname -m -> (GOARCH, variant) as registries label images
_MACHINE = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "i386": ("386", None), "i686": ("386", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "armv5l": ("arm", "v5"), "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "mips64": ("mips64", None), "loongarch64": ("loong64", None),
}
# an index entry without a variant means the architecture's baseline
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self):
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host():
    arch, variant = _MACHINE.get(_platform.machine().lower(), (_platform.machine().lower(), None))
    return Platform("linux", arch, variant)


def parse(text):
    """'linux/arm64/v8', 'linux/amd64' or 'arm64' (os defaults to linux)."""
    parts = (text or "").strip().split("/")
    if not all(parts) or not 1 <= len(parts) <= 3:
        raise ImageError(f"invalid platform {text!r}", "use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")
    if len(parts) == 1:
        parts = ["linux"] + parts
    os_, arch = parts[0].lower(), parts[1].lower()
    arch, variant = {"x86_64": ("amd64", None), "aarch64": ("arm64", None)}.get(arch, (arch, None))
    if len(parts) == 3:
        variant = parts[2].lower()
    return Platform(os_, arch, variant)


def _variant(arch, variant):
    return variant or _DEFAULT_VARIANT.get(arch)


def matches(entry_platform, wanted, strict_variant):
    """Does an index entry's platform dict serve `wanted`?"""
    if not entry_platform:
        return False
    if entry_platform.get("os") != wanted.os or entry_platform.get("architecture") != wanted.architecture:
        return False
    if wanted.variant is None or not strict_variant:
        return True
    return _variant(wanted.architecture, entry_platform.get("variant")) == _variant(wanted.architecture, wanted.variant)


def is_attestation(entry):
    """buildx attestation manifests (platform unknown/unknown) are not images to run."""
    annotations = entry.get("annotations") or {}
    plat = entry.get("platform") or {}
    return annotations.get("vnd.docker.reference.type") == "attestation-manifest" or \
        (plat.get("os") == "unknown" and plat.get("architecture") == "unknown")


def describe(entry_platform):
    p = entry_platform or {}
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x) or "unknown"


def select(index, wanted, reference=""):
    """The descriptor in an index or manifest list that best serves `wanted`; NotFound names the choices."""
    entries = [m for m in index.get("manifests", []) if not is_attestation(m)]
    # exact variant first; then, when the caller named no variant, the host-like baseline or any
    for strict in (True, False):
        if not strict and wanted.variant is not None and wanted != host():
            break  # an explicit --platform variant must match
        found = [m for m in entries if matches(m.get("platform"), wanted, strict)]
        if found:
            return found[0]
    available = ", ".join(sorted({describe(m.get("platform")) for m in entries})) or "none"
    raise NotFound(f"no image for platform {wanted} in {reference or 'the index'} (available: {available})",
                   "choose one of the available platforms with --platform OS/ARCH[/VARIANT]")
