"""Image references with the Docker grammar and defaults.

`alpine` is `docker.io/library/alpine:latest`; `host:port/repo:tag`, `repo@sha256:<64 hex>` and
`repo:tag@sha256:...` parse as docker does (github.com/distribution/reference).
"""
import re
from dataclasses import dataclass

from crate_image.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")
DEFAULT_TAG = "latest"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}"

PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
TAG_RE = re.compile(rf"^{_TAG}$")
DIGEST_RE = re.compile(rf"^{_DIGEST}$")
SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

NAME_TOTAL_LENGTH_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A normalised reference: domain, repository path, optional tag and digest."""
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self):
        """docker.io/library/busybox"""
        return f"{self.domain}/{self.path}"

    @property
    def target(self):
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self):
        return self._tagged(self.name)

    def _tagged(self, name):
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest):
        return Reference(self.domain, self.path, None, digest)

    def familiar(self):
        """The short form docker prints: busybox:latest, user/app:1, host:5000/x:y."""
        path = self.path
        if self.domain != DEFAULT_DOMAIN:
            return self._tagged(self.name)
        if path.startswith("library/") and path.count("/") == 1:
            path = path[len("library/"):]
        return self._tagged(path)


def _bad(text, why):
    raise InvalidReference(f"invalid image reference {text!r}: {why}",
                          "use NAME[:TAG][@sha256:DIGEST], e.g. busybox:latest or 127.0.0.1:5000/library/busybox:1.36")


def parse(text, default_tag=DEFAULT_TAG):
    """Parse and normalise a reference the way `docker pull` does; raises InvalidReference."""
    if not isinstance(text, str) or not text:
        _bad(text or "", "it is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        _bad(text, "it contains white space")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            _bad(text, f"digest {digest!r} is not ALGORITHM:HEX")
        if digest.startswith("sha256:") and not SHA256_RE.match(digest):
            _bad(text, "a sha256 digest has exactly 64 lowercase hex digits")
    tag = None
    # a ':' after the last '/' starts the tag; an earlier one belongs to host:port
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not TAG_RE.match(tag):
            _bad(text, f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
    if not rest:
        _bad(text, "the repository name is empty")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not DOMAIN_RE.match(domain):
            _bad(text, f"registry host {domain!r} is not a valid host[:port]")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = "library/" + path
    if path != path.lower():
        _bad(text, "repository names must be lowercase")
    if HEX64_RE.match(path.rsplit("/", 1)[-1]) and domain == DEFAULT_DOMAIN and path.startswith("library/") \
            and path.count("/") == 1 and tag is None and digest is None:
        _bad(text, "a 64-hex name is an image id, not a repository")
    if not PATH_RE.match(path):
        _bad(text, "repository path components are lowercase letters, digits and single . _ __ or - separators")
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        _bad(text, f"the name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def looks_like_reference(text):
    try:
        parse(text)
        return True
    except InvalidReference:
        return False
