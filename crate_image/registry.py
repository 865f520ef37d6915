"""Distribution v2 client: one requests.Session, auth challenges, retries, mirrors, Range resume.

A 401 names the scheme: Basic uses stored credentials; Bearer fetches a token from the realm
(GET with Basic credentials or anonymously; POST OAuth2 grants for identity tokens, or when the
realm refuses GET) and reuses it for every later request to that repository. Redirects (blob
storage) are followed by hand without the registry's Authorization header. 429/5xx and dropped
connections are retried with backoff; a blob cut off mid-stream resumes with `Range: bytes=N-`.
"""
import hashlib
import re
import threading
import time
import urllib.parse

import requests
import requests.adapters
import requests.utils
import urllib3

from crate_image import __version__, auth
from crate_image.config import load_registries
from crate_image.errors import AuthError, DigestMismatch, NotFound, RegistryError
from crate_image.media import ACCEPT, media_type_of

USER_AGENT = f"crate-image/{__version__}"
MAX_MANIFEST = 4 << 20
RETRY_STATUS = (429, 500, 502, 503, 504)
ATTEMPTS = 6
TIMEOUT = (15, 60)  # connect, read (between bytes)
CHUNK = 1 << 20

_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                   urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def backoff(attempt, retry_after=None):
    if retry_after:
        try:
            return min(float(retry_after), 30.0)
        except ValueError:
            pass
    return min(0.25 * (2 ** attempt), 8.0)


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header):
    """'Bearer realm="x",service="y",scope="z"' -> ('bearer', {'realm': 'x', ...})"""
    scheme, _, rest = (header or "").strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


class Client:
    """One client per process (or per front-end call): holds the Session, tokens and endpoints."""

    def __init__(self, registries=None, authfile=None, credentials=None, verbose=None):
        self.registries = registries if registries is not None else load_registries()
        self.authfile = authfile
        self.explicit = credentials  # {registry: Credentials} given on the command line
        self.session = requests.Session()
        self.session.trust_env = False  # no .netrc credentials leaking to blob storage
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._schemes = {}      # endpoint host -> "https" | "http"
        self._authz = {}        # (endpoint host, repository) -> Authorization header value
        self._tokens = {}       # (realm, service, scope, who) -> (token, expires at)
        self.verbose = verbose  # callable(str) for retry notices, or None

    # ---------------------------------------------------------------- plumbing
    def credentials(self, registry):
        if self.explicit and registry in self.explicit:
            return self.explicit[registry]
        return auth.lookup(registry, self.authfile)

    def _note(self, text):
        if self.verbose:
            self.verbose(text)

    def _send(self, method, url, headers=None, stream=False, data=None, auth_=None, verify=True):
        proxies = requests.utils.get_environ_proxies(url)
        return self.session.request(method, url, headers=headers or {}, stream=stream, data=data, auth=auth_,
                                    timeout=TIMEOUT, allow_redirects=False, proxies=proxies, verify=verify)

    def _scheme(self, endpoint):
        if endpoint.scheme:
            return endpoint.scheme
        with self._lock:
            if endpoint.host in self._schemes:
                return self._schemes[endpoint.host]
        scheme = "https"
        try:
            self._send("GET", f"https://{endpoint.host}/v2/", verify=not endpoint.insecure).close()
        except requests.exceptions.SSLError:
            if not endpoint.insecure:
                raise RegistryError(f"TLS to {endpoint.host} failed",
                                    f"fix the registry certificate, or mark {endpoint.host} insecure in the "
                                    "registries config (see README, crate-image)")
            scheme = "http"
        except _NETWORK_ERRORS as e:
            if not endpoint.insecure:
                raise RegistryError(f"cannot reach {endpoint.host} over HTTPS: {_short(e)}",
                                    "check the name and your network; plain HTTP is used only for localhost "
                                    "or registries marked insecure")
            scheme = "http"
        with self._lock:
            self._schemes[endpoint.host] = scheme
        return scheme

    def url(self, endpoint, path):
        return f"{self._scheme(endpoint)}://{endpoint.host}{path}"

    def request(self, endpoint, repository, method, path, headers=None, stream=False):
        """An authenticated request with retries; follows redirects without our Authorization.
        A mirror gets two tries only: the registry behind it is the better fallback."""
        url = self.url(endpoint, path)
        key = (endpoint.host, repository)
        authenticated = False
        attempts = 2 if endpoint.is_mirror else ATTEMPTS
        for attempt in range(attempts):
            hdrs = dict(headers or {})
            with self._lock:
                if key in self._authz:
                    hdrs["Authorization"] = self._authz[key]
            try:
                r = self._send(method, url, hdrs, stream=stream, verify=not endpoint.insecure)
                r = self._follow(r, method, headers or {}, stream, endpoint)
            except _NETWORK_ERRORS as e:
                if attempt == attempts - 1:
                    raise RegistryError(f"{method} {url} failed: {_short(e)}", "check that the registry is up and retry")
                self._note(f"retrying {url} after {_short(e)}")
                time.sleep(backoff(attempt))
                continue
            if r.status_code == 401 and not authenticated:
                challenge = r.headers.get("WWW-Authenticate", "")
                r.close()
                # a token we sent was refused (expired early, revoked): fetch a new one, not the cache's
                self._authenticate(endpoint, repository, challenge, fresh="Authorization" in hdrs)
                authenticated = True
                continue
            if r.status_code in RETRY_STATUS and attempt < attempts - 1:
                wait = backoff(attempt, r.headers.get("Retry-After"))
                r.close()
                self._note(f"registry answered {r.status_code} for {url}; retrying in {wait:.1f}s")
                time.sleep(wait)
                continue
            return r
        return r

    def _follow(self, r, method, headers, stream, endpoint):
        """Follow redirects by hand: the next hop gets the original headers minus Authorization."""
        hops = 0
        while r.is_redirect and "Location" in r.headers:
            hops += 1
            if hops > 10:
                raise RegistryError(f"too many redirects from {r.url}", "check the registry")
            location = urllib.parse.urljoin(r.url, r.headers["Location"])
            r.close()
            target = urllib.parse.urlsplit(location)
            if target.scheme == "http" and not self.registries.insecure(target.netloc) and \
                    urllib.parse.urlsplit(r.url).scheme == "https":
                raise RegistryError(f"the registry redirected to plain HTTP {target.netloc}",
                                    "use a registry that keeps HTTPS, or mark the host insecure")
            hdrs = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            r = self._send(method, location, hdrs, stream=stream, verify=not endpoint.insecure)
        return r

    # ---------------------------------------------------------------- auth
    def _authenticate(self, endpoint, repository, challenge, fresh=False):
        scheme, params = parse_challenge(challenge)
        registry = endpoint.registry
        creds = self.credentials(registry)
        if scheme == "basic":
            if not creds.username:
                raise AuthError(f"{registry} requires a login", f"run crate-image login {registry}")
            value = requests.auth._basic_auth_str(creds.username, creds.password or "")
        elif scheme == "bearer":
            value = "Bearer " + self._token(params, repository, creds, registry, fresh)
        else:
            raise AuthError(f"{registry} answered 401 with an unsupported challenge {challenge!r}",
                            "crate-image supports Basic and Bearer authentication")
        with self._lock:
            self._authz[(endpoint.host, repository)] = value

    def _token(self, params, repository, creds, registry, fresh=False):
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"{registry} sent a Bearer challenge without a realm", "check the registry's auth setup")
        service = params.get("service", "")
        scope = params.get("scope") or (f"repository:{repository}:pull" if repository else "")
        who = creds.username or ("token" if creds.identity_token else "")
        key = (realm, service, scope, who)
        with self._lock:
            cached = None if fresh else self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        if creds.identity_token:
            r = self._post_token(realm, query, {"grant_type": "refresh_token", "refresh_token": creds.identity_token})
        else:
            basic = (creds.username, creds.password or "") if creds.username else None
            r = self._retrying(lambda: self.session.get(realm, params=query, auth=basic, timeout=TIMEOUT,
                                                         proxies=requests.utils.get_environ_proxies(realm)))
            if r.status_code in (404, 405) and creds.username:
                r = self._post_token(realm, query, {"grant_type": "password", "username": creds.username,
                                                    "password": creds.password or ""})
        if r.status_code in (401, 403):
            raise AuthError(f"the token server {realm} refused {'user ' + creds.username if creds.username else 'anonymous access'}"
                            f" for {scope or registry}",
                            f"run crate-image login {registry} with valid credentials" if not creds.username
                            else f"check the password (crate-image login {registry})")
        if r.status_code != 200:
            raise AuthError(f"the token server {realm} answered {r.status_code}", "check the registry's auth setup")
        try:
            doc = r.json()
        except ValueError:
            raise AuthError(f"the token server {realm} sent no JSON", "check the registry's auth setup")
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise AuthError(f"the token server {realm} sent no token", "check the registry's auth setup")
        lifetime = max(int(doc.get("expires_in") or 60), 60)
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + lifetime - 10)
        return token

    def _post_token(self, realm, query, grant):
        form = dict(query, client_id="crate-image", access_type="offline", **grant)
        return self._retrying(lambda: self.session.post(realm, data=form, timeout=TIMEOUT,
                                                         proxies=requests.utils.get_environ_proxies(realm)))

    def _retrying(self, call):
        for attempt in range(ATTEMPTS):
            try:
                r = call()
            except _NETWORK_ERRORS as e:
                if attempt == ATTEMPTS - 1:
                    raise RegistryError(f"the token server is unreachable: {_short(e)}", "retry later")
                time.sleep(backoff(attempt))
                continue
            if r.status_code in RETRY_STATUS and attempt < ATTEMPTS - 1:
                time.sleep(backoff(attempt, r.headers.get("Retry-After")))
                continue
            return r
        return r

    # ---------------------------------------------------------------- API
    def ping(self, registry):
        """Check that we can log in: GET /v2/ with credentials (raises AuthError when refused)."""
        endpoint = self.registries.endpoints(registry)[-1]
        r = self.request(endpoint, "", "GET", "/v2/")
        r.close()
        if r.status_code == 401:
            raise AuthError(f"{registry} refused the credentials", "check the user name and password")
        if r.status_code != 200:
            raise RegistryError(f"{registry} answered {r.status_code} to /v2/", "is it a registry?")

    def fetch_manifest(self, ref):
        """(endpoint, bytes, media type, parsed doc, digest) for ref.target, mirrors first."""
        errors = []
        endpoints = self.registries.endpoints(ref.domain)
        for endpoint in endpoints:
            try:
                data, ctype, header_digest = self._manifest_from(endpoint, ref.path, ref.target)
            except NotFound as e:
                errors.append(e)
                if endpoint.is_mirror:
                    continue
                raise
            except (RegistryError,) as e:
                if endpoint.is_mirror and not isinstance(e, AuthError):
                    self._note(f"mirror {endpoint.host} failed ({e.problem}); trying the next")
                    errors.append(e)
                    continue
                raise
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if ref.digest and ref.digest != digest:
                raise DigestMismatch(f"the manifest for {ref} hashes to {digest}",
                                     "the registry sent other content than the digest names; do not trust it")
            if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
                raise DigestMismatch(f"the manifest for {ref} hashes to {digest} but the registry says {header_digest}",
                                     "the content was altered in transit or the registry is broken")
            media_type, doc = media_type_of(data, ctype)
            return endpoint, data, media_type, doc, digest
        raise errors[-1]

    def _manifest_from(self, endpoint, repository, target):
        r = self.request(endpoint, repository, "GET", f"/v2/{repository}/manifests/{target}",
                         headers={"Accept": ACCEPT}, stream=True)
        try:
            if r.status_code == 404:
                raise NotFound(f"{endpoint.host}/{repository}:{target} not found" if ":" not in target else
                               f"{endpoint.host}/{repository}@{target} not found",
                               "check the name and tag (crate-image pull NAME[:TAG])")
            self._check_status(r, endpoint, repository)
            length = int(r.headers.get("Content-Length") or 0)
            if length > MAX_MANIFEST:
                raise RegistryError(f"manifest of {repository} is {length} bytes", "manifests over 4 MiB are refused")
            data = r.raw.read(MAX_MANIFEST + 1, decode_content=True)
            if len(data) > MAX_MANIFEST:
                raise RegistryError(f"manifest of {repository} is over 4 MiB", "manifests over 4 MiB are refused")
            return data, r.headers.get("Content-Type"), r.headers.get("Docker-Content-Digest")
        finally:
            r.close()

    def _check_status(self, r, endpoint, repository):
        if r.status_code in (200, 206):
            return
        if r.status_code == 401:
            creds = self.credentials(endpoint.registry)
            raise AuthError(f"{endpoint.registry} refused access to {repository}" +
                            (f" for user {creds.username}" if creds.username else " (not logged in)"),
                            f"run crate-image login {endpoint.registry}")
        if r.status_code == 403:
            raise AuthError(f"{endpoint.host} denies access to {repository}", "check your permissions")
        raise RegistryError(f"{endpoint.host} answered {r.status_code} for {repository}: {_body(r)}",
                            "retry later or check the registry")

    def fetch_blob_bytes(self, endpoint, repository, digest, size_limit=64 << 20):
        """A small blob (image config) read whole and verified."""
        out = bytearray()
        for chunk in self.blob_chunks(endpoint, repository, digest):
            out += chunk
            if len(out) > size_limit:
                raise RegistryError(f"blob {digest} is larger than expected", "check the image")
        got = "sha256:" + hashlib.sha256(out).hexdigest()
        if got != digest:
            raise DigestMismatch(f"blob {digest} from {endpoint.host}/{repository} hashes to {got}",
                                 "the registry sent corrupt content; nothing was stored")
        return bytes(out)

    def blob_chunks(self, endpoint, repository, digest, size=None, start=0):
        """Yield a blob's bytes from `start`; a connection dropped mid-way resumes with Range."""
        offset, failures = start, 0
        path = f"/v2/{repository}/blobs/{digest}"
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            r = self.request(endpoint, repository, "GET", path, headers=headers, stream=True)
            try:
                if r.status_code == 404:
                    raise NotFound(f"blob {digest} not found in {endpoint.host}/{repository}",
                                   "the image is incomplete in the registry; push it again")
                if r.status_code == 416 and size is not None and offset >= size:
                    return
                self._check_status(r, endpoint, repository)
                skip = offset if (offset and r.status_code == 200) else 0  # Range ignored: skip what we have
                try:
                    while True:
                        data = r.raw.read(CHUNK, decode_content=False)
                        if not data:
                            break
                        if skip:
                            if len(data) <= skip:
                                skip -= len(data)
                                continue
                            data, skip = data[skip:], 0
                        offset += len(data)
                        failures = 0
                        yield data
                except _NETWORK_ERRORS + (OSError,) as e:
                    failures += 1
                    if failures >= ATTEMPTS:
                        raise RegistryError(f"download of {digest} keeps failing at byte {offset}: {_short(e)}",
                                            "check the network and retry")
                    self._note(f"connection dropped at byte {offset} of {digest[:19]}; resuming")
                    time.sleep(backoff(failures - 1))
                    continue
            finally:
                r.close()
            if size is None or offset >= size:
                return
            failures += 1  # a clean EOF before the announced size: resume too
            if failures >= ATTEMPTS:
                raise RegistryError(f"download of {digest} stops at byte {offset} of {size}", "retry later")
            time.sleep(backoff(failures - 1))


def _short(e):
    """What went wrong on the network, without urllib3's nesting."""
    text = repr(e)
    if isinstance(e, requests.Timeout) or "timed out" in text:
        return "timed out"
    if "NameResolutionError" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return "the host name does not resolve"
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "connection refused"
    if "RemoteDisconnected" in text or "ConnectionReset" in text or "IncompleteRead" in text:
        return "the connection was closed mid-way"
    text = str(e)
    return text if len(text) < 160 else text[:160] + "..."


def _body(r):
    try:
        errors = r.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or r.reason
    except ValueError:
        return r.reason
