"""Where things live and how registries are reached.

Store root: --root DIR, else $CRATE_ROOT, else /var/lib/crate as root and
${XDG_DATA_HOME:-~/.local/share}/crate otherwise.

Registries file (TOML): $CRATE_REGISTRIES_CONF, else ${XDG_CONFIG_HOME:-~/.config}/crate/registries.toml
for a non-root user when it exists, else /etc/crate/registries.toml:

    [registries."registry.example:5000"]
    insecure = true                    # plain HTTP (and TLS without verification) allowed
    [registries."docker.io"]
    mirrors = ["127.0.0.1:5000", "https://mirror.example"]   # tried in order, then docker.io itself

127.0.0.1, ::1 and localhost are always insecure, as in docker.
"""
import os
import tomllib
from dataclasses import dataclass, field

from crate_image.errors import ImageError
from crate_image.rootless import is_real_root

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


def default_root():
    if os.environ.get("CRATE_ROOT"):
        return os.environ["CRATE_ROOT"]
    if is_real_root():
        return "/var/lib/crate"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "crate")


def registries_file():
    if os.environ.get("CRATE_REGISTRIES_CONF"):
        return os.environ["CRATE_REGISTRIES_CONF"]
    if not is_real_root():
        conf = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        user = os.path.join(conf, "crate", "registries.toml")
        if os.path.exists(user):
            return user
    return "/etc/crate/registries.toml"


def host_of(hostport):
    """'127.0.0.1:5000' -> '127.0.0.1', '[::1]:5000' -> '[::1]'"""
    if hostport.startswith("["):
        return hostport[:hostport.index("]") + 1]
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


@dataclass
class Endpoint:
    """One place to fetch a repository from: a registry or one of its mirrors."""
    host: str          # host[:port] used in URLs
    insecure: bool     # plain HTTP / unverified TLS allowed
    scheme: str | None = None  # forced by a mirror URL, else found by probing
    is_mirror: bool = False
    registry: str | None = None  # the name credentials are stored under (docker.io, not registry-1...)

    def __post_init__(self):
        if self.registry is None:
            self.registry = self.host


@dataclass
class RegistriesConfig:
    registries: dict = field(default_factory=dict)
    path: str | None = None

    def _entry(self, host):
        return self.registries.get(host) or {}

    def insecure(self, host):
        return host_of(host) in LOCAL_HOSTS or bool(self._entry(host).get("insecure"))

    def endpoints(self, domain):
        """Mirrors first, then the registry itself (docker.io is served at registry-1.docker.io)."""
        out = []
        for mirror in self._entry(domain).get("mirrors") or []:
            scheme = None
            if "://" in mirror:
                scheme, mirror = mirror.split("://", 1)
                if scheme not in ("http", "https"):
                    raise ImageError(f"mirror {scheme}://{mirror} in {self.path} has an unknown scheme",
                                     "use http:// or https:// (or none)")
            mirror = mirror.rstrip("/")
            insecure = self.insecure(mirror)
            if scheme == "http" and not insecure:
                raise ImageError(f"mirror http://{mirror} in {self.path} is plain HTTP but not marked insecure",
                                 f'add [registries."{mirror}"] insecure = true, or use https')
            out.append(Endpoint(mirror, insecure, scheme, is_mirror=True))
        real = DOCKER_HUB_ENDPOINT if domain == "docker.io" else domain
        out.append(Endpoint(real, self.insecure(domain), registry=domain))
        return out


def load_registries(path=None):
    path = path or registries_file()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return RegistriesConfig(path=path)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ImageError(f"cannot read registries config {path}: {e}", "fix the TOML (see README, crate-image)")
    regs = doc.get("registries") or {}
    if not isinstance(regs, dict) or not all(isinstance(v, dict) for v in regs.values()):
        raise ImageError(f"{path}: [registries.\"HOST\"] tables expected",
                         'write [registries."HOST"] with insecure = true and/or mirrors = ["..."]')
    for host, entry in regs.items():
        unknown = set(entry) - {"insecure", "mirrors"}
        if unknown:
            raise ImageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} for registry {host}",
                             "use insecure and mirrors only")
    return RegistriesConfig(regs, path)
