"""Registry credentials: containers auth.json, ~/.docker/config.json and docker-credential helpers.

Lookup order (as podman/skopeo): $REGISTRY_AUTH_FILE or ${XDG_RUNTIME_DIR}/containers/auth.json,
then $DOCKER_CONFIG/config.json or ~/.docker/config.json. In each file a registry's credHelpers
entry wins over credsStore, which wins over the inline `auths` entry. `login` writes to the docker
config (or --authfile), the file docker, podman and skopeo all read.
"""
import base64
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

from crate_image.errors import AuthError

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None  # an OAuth2 refresh token (docker's "<token>" user)

    def __bool__(self):
        return bool(self.username or self.identity_token)


def containers_auth_file():
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return os.environ["REGISTRY_AUTH_FILE"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "containers", "auth.json")
    return f"/run/containers/{os.getuid()}/auth.json"


def docker_config_file():
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def auth_files(authfile=None):
    return [authfile] if authfile else [containers_auth_file(), docker_config_file()]


def _keys(registry):
    """The spellings a config file may use for `registry`."""
    if registry == "docker.io":
        return list(DOCKER_HUB_KEYS)
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read credentials file {path}: {e}", "fix or remove the file")


def _helper_get(helper, registry):
    program = f"docker-credential-{helper}"
    for key in _keys(registry)[:2]:
        try:
            out = subprocess.run([program, "get"], input=key, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise AuthError(f"credential helper {program} is configured for {registry} but not installed",
                            f"install {program} or remove it from your docker config")
        except subprocess.TimeoutExpired:
            raise AuthError(f"credential helper {program} did not answer within 60s", "check the helper")
        if out.returncode == 0:
            try:
                data = json.loads(out.stdout)
            except ValueError:
                raise AuthError(f"credential helper {program} printed no JSON", "check the helper")
            user, secret = data.get("Username"), data.get("Secret")
            if user == "<token>":
                return Credentials(identity_token=secret)
            return Credentials(user, secret)
        # "credentials not found in native keychain" is not an error: try the next spelling
    return Credentials()


def _from_document(doc, registry):
    helpers = doc.get("credHelpers") or {}
    for key in _keys(registry):
        if key in helpers:
            return _helper_get(helpers[key], registry)
    if doc.get("credsStore"):
        found = _helper_get(doc["credsStore"], registry)
        if found:
            return found
    auths = doc.get("auths") or {}
    for key in _keys(registry):
        entry = auths.get(key)
        if not entry:
            continue
        if entry.get("identitytoken"):
            return Credentials(identity_token=entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthError(f"the auth entry for {registry} is not base64 of user:password",
                                f"run crate-image login {registry} again")
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password"))
    return Credentials()


def lookup(registry, authfile=None):
    """Credentials for a registry host[:port] from the first file that has them (or empty)."""
    for path in auth_files(authfile):
        doc = _read(path)
        if doc:
            found = _from_document(doc, registry)
            if found:
                return found
    return Credentials()


def _write(path, doc):
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".auth-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _key_for_write(registry):
    return "https://index.docker.io/v1/" if registry == "docker.io" else registry


def store(registry, username, password, authfile=None):
    """Save user:password for a registry; returns the file written."""
    path = authfile or docker_config_file()
    doc = _read(path) or {}
    doc.setdefault("auths", {})[_key_for_write(registry)] = {
        "auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write(path, doc)
    return path


def remove(registry, authfile=None):
    """Forget a registry's credentials in every file that has them; returns the files changed."""
    changed = []
    for path in auth_files(authfile):
        doc = _read(path)
        if not doc:
            continue
        auths = doc.get("auths") or {}
        keys = [k for k in _keys(registry) if k in auths]
        if keys:
            for k in keys:
                del auths[k]
            _write(path, doc)
            changed.append(path)
    return changed
