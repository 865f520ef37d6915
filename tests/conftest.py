"""Fixtures shared by the whole suite: real registries, real test images, host capabilities.

Tests that need root, user namespaces or a registry skip with a reason when the host cannot
provide them. With CRATE_TEST_STRICT=1 (set by .ci/run) a missing prerequisite fails instead,
so CI can never pass by skipping.
"""
import os
import pwd
import shutil
import socket
import subprocess
import time

import pytest
import requests

import oci_images

STRICT = os.environ.get("CRATE_TEST_STRICT") == "1"
TEST_USER = os.environ.get("CRATE_TEST_USER", "crate-test")


def unavailable(reason):
    """Skip (or, in strict mode, fail) because the host lacks something."""
    if STRICT:
        pytest.fail(f"prerequisite missing (CRATE_TEST_STRICT=1): {reason}", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------ host capabilities
def is_root():
    return os.geteuid() == 0


def userns_problem():
    """Why unprivileged user namespaces with a test user are unavailable, or None."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user.max_user_namespaces is 0"
    except OSError:
        return "no /proc/sys/user/max_user_namespaces"
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if f.read().strip() == "0":
                return "kernel.unprivileged_userns_clone is 0"
    except OSError:
        pass  # not a Debian-patched kernel: allowed
    if not is_root():
        return None  # the tests run as the unprivileged user themselves
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return f"no test user {TEST_USER!r} (tests/setup-host.sh creates it)"
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) is missing"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and not is_root():
        unavailable("needs root")
    if item.get_closest_marker("userns"):
        problem = userns_problem()
        if problem:
            unavailable(problem)
    if item.get_closest_marker("registry") and not shutil.which("docker-registry"):
        unavailable("Debian's docker-registry is not installed (apt-get install docker-registry)")


# ------------------------------------------------------------------ registry
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry process on 127.0.0.1 with its own storage; stopped by pid."""

    def __init__(self, workdir, auth_yaml="", user=None, password=None):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.user, self.password = user, password
        self.workdir = workdir
        os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
        config = os.path.join(workdir, "config.yml")
        with open(config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {workdir}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
{auth_yaml}""")
        self.log = open(os.path.join(workdir, "registry.log"), "wb")
        self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        self._wait_ready()

    @property
    def auth(self):
        return (self.user, self.password) if self.user else None

    def _wait_ready(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                r = requests.get(f"{self.url}/v2/", timeout=1)
                if r.status_code in (200, 401):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        with open(os.path.join(self.workdir, "registry.log"), "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"docker-registry did not start on {self.host}:\n{tail}")

    def push(self, layout, desc, repository, tag):
        oci_images.push(layout, desc, self.url, repository, tag, auth=self.auth)
        return f"{self.host}/{repository}:{tag}"

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _start_registry(tmp_path_factory, name, **kwargs):
    if not shutil.which("docker-registry"):
        unavailable("Debian's docker-registry is not installed (apt-get install docker-registry)")
    return Registry(str(tmp_path_factory.mktemp(name)), **kwargs)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The distribution registry, anonymous access, on a free port."""
    reg = _start_registry(tmp_path_factory, "registry")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory):
    """The distribution registry behind htpasswd basic auth (user crate, password crate-secret)."""
    htpasswd = shutil.which("htpasswd")
    if not htpasswd:
        unavailable("htpasswd is missing (apt-get install apache2-utils)")
    workdir = str(tmp_path_factory.mktemp("basic-auth"))
    user, password = "crate", "crate-secret"
    entry = subprocess.run([htpasswd, "-Bbn", user, password], capture_output=True, text=True, check=True)
    with open(os.path.join(workdir, "htpasswd"), "w") as f:
        f.write(entry.stdout.strip() + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: crate-test\n    path: {workdir}/htpasswd\n"
    reg = _start_registry(tmp_path_factory, "basic-registry", auth_yaml=auth, user=user, password=password)
    yield reg
    reg.stop()


# ------------------------------------------------------------------ images
@pytest.fixture(scope="session")
def busybox_binary():
    path = oci_images.find_static_busybox()
    if path is None:
        unavailable("no static busybox (apt-get install busybox-static)")
    return path


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory, busybox_binary):
    """An OCI layout holding the standard busybox images; .images maps names to descriptors."""
    layout = oci_images.Layout(str(tmp_path_factory.mktemp("layout") / "oci"))
    layout.images = oci_images.build_busybox_images(layout, busybox_binary)
    return layout


@pytest.fixture(scope="session")
def busybox_refs(registry, image_layout):
    """The busybox images pushed to the anonymous registry; maps a name to its reference.

    latest: Docker manifest list (amd64 + arm64/v8); oci-index: OCI index; v2s2 and oci: single
    amd64 manifests; uncompressed: OCI manifest with a plain tar layer.
    """
    imgs = image_layout.images
    return {
        "latest": registry.push(image_layout, imgs["docker-index"], "library/busybox", "latest"),
        "oci-index": registry.push(image_layout, imgs["oci-index"], "library/busybox", "oci-index"),
        "v2s2": registry.push(image_layout, imgs["docker-amd64"], "library/busybox", "v2s2"),
        "oci": registry.push(image_layout, imgs["oci-amd64"], "library/busybox", "oci"),
        "uncompressed": registry.push(image_layout, imgs["oci-uncompressed"], "library/busybox", "uncompressed"),
    }


# ------------------------------------------------------------------ crate-image: token auth, faulty proxies
# (added for crate-image's tests; nothing above changes)
import base64 as _b64
import http.server as _http_server
import json as _json
import socketserver as _socketserver
import threading as _threading
import urllib.parse as _urlparse
import uuid as _uuid


class _ThreadingServer(_socketserver.ThreadingMixIn, _http_server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TokenServer:
    """A Docker-Hub-like token service on 127.0.0.1 for a registry configured with `auth: token`.

    GET /token (anonymous or Basic) and POST /token (OAuth2 password and refresh_token grants).
    Repositories under private/ need a user; anonymous users get pull elsewhere. Every request is
    recorded in .requests as (method, grant_type or None, user or None, scopes).
    post_only=True answers GET with 405, as some realms do, to force the POST password grant.
    """

    SERVICE = "crate-test-registry"
    ISSUER = "crate-test-issuer"

    def __init__(self, workdir, users, refresh_tokens=None):
        self.workdir = workdir
        self.users = dict(users)
        self.refresh_tokens = dict(refresh_tokens or {})
        self.requests = []
        self.post_only = False
        self.key = os.path.join(workdir, "token-key.pem")
        self.cert = os.path.join(workdir, "token-cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "30", "-subj", "/CN=crate test token issuer"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = _b64.b64encode(der).decode()
        server = self

        class Handler(_http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, code, obj):
                body = _json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = _urlparse.urlsplit(self.path)
                query = _urlparse.parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split()]
                user = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    name, _, password = _b64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        server.requests.append(("GET", None, name, scopes))
                        return self.reply(401, {"details": "incorrect username or password"})
                    user = name
                server.requests.append(("GET", None, user, scopes))
                if server.post_only:
                    return self.reply(405, {"details": "use POST"})
                self.reply(200, server.issue(user, scopes))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = _urlparse.parse_qs(self.rfile.read(length).decode())
                get = lambda k: form.get(k, [None])[0]
                scopes = [s for v in form.get("scope", []) for s in v.split()]
                grant = get("grant_type")
                if grant == "password":
                    user = get("username")
                    ok = server.users.get(user) == get("password")
                elif grant == "refresh_token":
                    user = server.refresh_tokens.get(get("refresh_token"))
                    ok = user is not None
                else:
                    server.requests.append(("POST", grant, None, scopes))
                    return self.reply(400, {"error": "unsupported_grant_type"})
                server.requests.append(("POST", grant, user if ok else None, scopes))
                if not ok:
                    return self.reply(401, {"error": "invalid_grant"})
                self.reply(200, dict(server.issue(user, scopes), refresh_token=_uuid.uuid4().hex))

        self.httpd = _ThreadingServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = _threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _sign(self, claims):
        def b64u(data):
            return _b64.urlsafe_b64encode(data).rstrip(b"=").decode()
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = b64u(_json.dumps(header).encode()) + "." + b64u(_json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing_input.encode(),
                                   capture_output=True, check=True).stdout
        return signing_input + "." + b64u(signature)

    def issue(self, user, scopes):
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository":
                continue
            wanted = actions.split(",")
            if user:
                allowed = [a for a in wanted if a in ("pull", "push", "delete")]
            elif name.startswith("private/"):
                allowed = []
            else:
                allowed = [a for a in wanted if a == "pull"]
            access.append({"type": "repository", "name": name, "actions": allowed})
        now = int(time.time())
        token = self._sign({"iss": self.ISSUER, "sub": user or "", "aud": self.SERVICE, "exp": now + 600,
                            "nbf": now - 10, "iat": now, "jti": _uuid.uuid4().hex, "access": access})
        return {"token": token, "access_token": token, "expires_in": 600}

    def auth_yaml(self):
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.SERVICE}\n"
                f"    issuer: {self.ISSUER}\n    rootcertbundle: {self.cert}\n")

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token):
        self.token = token

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class TokenRegistry(Registry):
    """The distribution registry with `auth: token` against a TokenServer (user crate / crate-secret)."""

    def __init__(self, workdir, token_server):
        self.token_server = token_server
        super().__init__(workdir, auth_yaml=token_server.auth_yaml(), user="crate", password="crate-secret")

    def push(self, layout, desc, repository, tag):
        scope = f"repository:{repository}:pull,push"
        r = requests.get(self.token_server.realm, params={"service": TokenServer.SERVICE, "scope": scope},
                         auth=(self.user, self.password))
        r.raise_for_status()
        oci_images.push(layout, desc, self.url, repository, tag, auth=_BearerAuth(r.json()["token"]))
        return f"{self.host}/{repository}:{tag}"


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """The distribution registry behind Bearer token auth (a TokenServer; user crate, password
    crate-secret; refresh token 'crate-refresh-token' for that user); .token_server has the log."""
    if not shutil.which("openssl"):
        unavailable("openssl is missing (apt-get install openssl)")
    if not shutil.which("docker-registry"):
        unavailable("Debian's docker-registry is not installed (apt-get install docker-registry)")
    workdir = str(tmp_path_factory.mktemp("token-auth"))
    server = TokenServer(workdir, {"crate": "crate-secret"}, {"crate-refresh-token": "crate"})
    reg = TokenRegistry(workdir, server)
    yield reg
    reg.stop()
    server.stop()


class FaultyProxy:
    """An HTTP proxy in front of a registry that misbehaves on purpose, for one blob at a time.

    mode: None (pass through), "drop" (send half of a blob body, then cut the connection, once per
    blob), "corrupt" (flip a byte in every blob body), "slow" (blob bodies at ~320 kB/s),
    "flaky" (answer 503 then 429 to the first two
    requests of every path), "redirect" (answer blob GETs with 307 to a storage server on another
    port that records the headers it got in .storage_headers).
    Every request is logged in .log as (method, path, Range header or None).
    """

    def __init__(self, upstream):
        self.upstream = upstream
        self.mode = None
        self.log = []
        self.dropped = set()
        self.failures = {}
        self.storage_headers = []
        proxy = self

        class Handler(_http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self, method):
                proxy.log.append((method, self.path, self.headers.get("Range")))
                is_blob = "/blobs/sha256:" in self.path and method == "GET"
                if proxy.require_basic:
                    header = self.headers.get("Authorization", "")
                    proxy.authorizations.append(header)
                    if header != "Basic " + _b64.b64encode(proxy.require_basic.encode()).decode():
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="faulty-proxy"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if proxy.mode == "flaky":
                    n = proxy.failures.get(self.path, 0)
                    if n < 2:
                        proxy.failures[self.path] = n + 1
                        code = 503 if n == 0 else 429
                        self.send_response(code)
                        if code == 429:
                            self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if proxy.mode == "redirect" and is_blob:
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{proxy.storage_port}{self.path}?signed=1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                r = requests.request(method, proxy.upstream + self.path, headers=headers, data=body,
                                     allow_redirects=False, stream=True)
                data = r.raw.read(decode_content=False) if method != "HEAD" else b""
                if is_blob and r.status_code in (200, 206) and proxy.mode == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                cut = is_blob and r.status_code == 200 and proxy.mode == "drop" and \
                    self.path not in proxy.dropped and len(data) > 1024
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if method != "HEAD" else
                                                       int(r.headers.get("Content-Length") or 0)))
                self.end_headers()
                if cut:
                    proxy.dropped.add(self.path)
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if data and is_blob and proxy.mode == "slow":
                    for i in range(0, len(data), 16384):
                        self.wfile.write(data[i:i + 16384])
                        self.wfile.flush()
                        time.sleep(0.05)
                elif data:
                    self.wfile.write(data)

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

            def do_POST(self):
                self._forward("POST")

            def do_PUT(self):
                self._forward("PUT")

        class Storage(_http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.storage_headers.append(dict(self.headers.items()))
                path = self.path.split("?", 1)[0]
                digest = path.rsplit("/", 1)[-1]
                blob = os.path.join(proxy.blob_dir, *digest.split(":", 1)) if proxy.blob_dir else None
                if not blob or not os.path.exists(blob):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(blob, "rb") as f:
                    data = f.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.blob_dir = None  # an OCI layout's blobs/ dir the storage server serves from
        self.require_basic = None  # "user:password" to demand Basic auth on every request
        self.authorizations = []
        self.httpd = _ThreadingServer(("127.0.0.1", 0), Handler)
        self.storage = _ThreadingServer(("127.0.0.1", 0), Storage)
        self.port = self.httpd.server_address[1]
        self.storage_port = self.storage.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        for srv in (self.httpd, self.storage):
            _threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(self):
        for srv in (self.httpd, self.storage):
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def faulty_proxy(registry):
    """A FaultyProxy in front of the anonymous registry; set .mode in the test."""
    proxy = FaultyProxy(registry.url)
    yield proxy
    proxy.stop()


class ImageCLI:
    """Runs the installed crate-image with its own store root and isolated credential/config files."""

    def __init__(self, tmp_path):
        self.root = str(tmp_path / "store")
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.authfile = str(tmp_path / "auth.json")
        self.registries_conf = str(tmp_path / "registries.toml")
        self.env = dict(os.environ, CRATE_ROOT=self.root, REGISTRY_AUTH_FILE=self.authfile,
                        DOCKER_CONFIG=str(self.home / ".docker"), CRATE_REGISTRIES_CONF=self.registries_conf,
                        HOME=str(self.home))

    def __call__(self, *args, check=True, input=None, env=None, timeout=300):
        out = subprocess.run(["crate-image", *args], capture_output=True, text=True, input=input,
                             env=dict(self.env, **(env or {})), timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"crate-image {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out


@pytest.fixture
def image_cli(tmp_path):
    """crate-image with a fresh store under tmp_path (CRATE_ROOT) and no outside credentials."""
    cli = ImageCLI(tmp_path)
    yield cli
    if os.geteuid() != 0 and os.path.isdir(cli.root):
        # a rootless store holds files of subordinate ids: only the user namespace can delete them
        from crate_image import rootless, store
        rootless.maybe(store.remove_tree, cli.root)


@pytest.fixture(scope="session")
def edge_case_ref(registry, image_layout, busybox_binary):
    """The busybox + edge-case layers image (Docker v2s2, 5 layers) in the anonymous registry."""
    desc = oci_images.build_edge_case_image(image_layout, busybox_binary)
    return registry.push(image_layout, desc, "library/layers", "latest")


# ------------------------------------------------------------------ runtime
@pytest.fixture(scope="session")
def shared_tmp():
    """A world-traversable scratch directory (pytest's tmp dirs are private to root, and the
    rootless tests run as the unprivileged test user); removed at the end."""
    import tempfile
    path = tempfile.mkdtemp(prefix="crate-tests-")
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


@pytest.fixture(scope="session")
def busybox_rootfs(shared_tmp, busybox_binary):
    """A busybox root filesystem (root-owned, world-readable) shared read-only by test bundles."""
    import runtime_helpers
    return runtime_helpers.extract_busybox_rootfs(busybox_binary, os.path.join(shared_tmp, "rootfs"))


def require_runc():
    """The runc comparisons need root, Debian's runc and a static busybox."""
    if os.geteuid() != 0:
        unavailable("comparing with runc needs root")
    if not shutil.which("runc"):
        unavailable("runc is not installed (apt-get install runc)")
    if oci_images.find_static_busybox() is None:
        unavailable("no static busybox (apt-get install busybox-static)")


def _delete_leftovers(runtime):
    """Whatever a (failed) test left in this runtime's --root: delete --force, so no container
    outlives its test."""
    if not os.path.isdir(runtime.root):
        return
    for container_id in os.listdir(runtime.root):
        if os.path.exists(os.path.join(runtime.root, container_id, "state.json")):
            runtime("delete", "--force", container_id, check=False)


@pytest.fixture
def runtime(tmp_path):
    """crate-runc as root with a private --root and --log."""
    import runtime_helpers
    rt = runtime_helpers.Runtime(str(tmp_path / "state"), log=str(tmp_path / "runtime.log"))
    yield rt
    _delete_leftovers(rt)


@pytest.fixture
def user_runtime(shared_tmp, request):
    """crate-runc run as the unprivileged test user, with a private --root it owns."""
    import runtime_helpers
    if userns_problem():
        unavailable(userns_problem())
    if is_root():
        entry = pwd.getpwnam(TEST_USER)
        root = os.path.join(shared_tmp, f"user-{request.node.name[:60]}")
        os.makedirs(root, exist_ok=True)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        rt = runtime_helpers.Runtime(root, user=TEST_USER)
    else:
        import tempfile
        rt = runtime_helpers.Runtime(tempfile.mkdtemp(dir=shared_tmp))
    yield rt
    _delete_leftovers(rt)


# ------------------------------------------------------------------ crate (the front end)
# (added for crate's tests; nothing above changes)
import json


class CrateCLI:
    """The installed `crate` with its own store root (CRATE_ROOT), run as this user or, through
    setpriv, as an unprivileged user with a private HOME and XDG_RUNTIME_DIR."""

    def __init__(self, root, user=None, home=None):
        self.root = root
        self.user = user
        self.home = home or os.path.dirname(root)
        self.binary = shutil.which("crate")
        if self.binary is None:
            raise RuntimeError("crate is not on PATH (run the tests through `make test`)")
        self.binary = os.path.realpath(self.binary)  # the venv may sit outside a checkout the test user cannot reach
        self.runtime_dir = os.path.join(self.home, "run")
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            for path in (self.home, self.runtime_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        # a proxy that refuses everything: should anything try to leave 127.0.0.1, it fails here
        self.env = {"CRATE_ROOT": root, "HOME": self.home, "XDG_RUNTIME_DIR": self.runtime_dir,
                    "PATH": os.path.dirname(self.binary) + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    "CRATE_REGISTRIES_CONF": os.path.join(self.home, "registries.toml"),
                    "REGISTRY_AUTH_FILE": os.path.join(self.home, "auth.json"),
                    "DOCKER_CONFIG": os.path.join(self.home, ".docker"),
                    "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                    "NO_PROXY": "127.0.0.1,localhost", "LANG": "C.UTF-8"}

    def command(self, *args, env=None):
        full = dict(self.env, **(env or {}))
        argv = [self.binary] + [str(a) for a in args]
        prefix = ["env", "-i"] + [f"{k}={v}" for k, v in full.items()]
        if self.user:
            entry = pwd.getpwnam(self.user)
            prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"] + prefix
        return prefix + argv

    def __call__(self, *args, check=True, input=None, timeout=120, env=None):
        done = subprocess.run(self.command(*args, env=env), capture_output=True, text=True, input=input,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"crate {' '.join(map(str, args))} failed ({done.returncode}):\n"
                                 f"{done.stderr}{done.stdout}")
        return done

    def popen(self, *args, env=None, **kwargs):
        return subprocess.Popen(self.command(*args, env=env), **kwargs)

    def ids(self):
        return self("ps", "-a", "-q", "--no-trunc").stdout.split()

    def inspect(self, name):
        return json.loads(self("inspect", name).stdout)[0]

    def container_dirs(self):
        path = os.path.join(self.root, "containers")
        return sorted(n for n in os.listdir(path) if not n.startswith(".")) if os.path.isdir(path) else []

    def mounts(self):
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(os.path.realpath(self.root))]

    def cleanup(self):
        try:
            ids = self.ids()
        except Exception:
            ids = []
        if ids:
            self("rm", "-f", *ids, check=False)
        for mount in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", self.home], check=False)


@pytest.fixture
def crate(tmp_path):
    """crate as the test process's user (root for the `root` tests) with a fresh store."""
    home = str(tmp_path / "crate-home")
    os.makedirs(home)
    cli = CrateCLI(os.path.join(home, "store"), home=home)
    yield cli
    cli.cleanup()


@pytest.fixture
def user_crate(shared_tmp, request):
    """crate as the unprivileged test user (rootless: user namespaces, crate-runc rootless)."""
    if userns_problem():
        unavailable(userns_problem())
    import tempfile
    home = tempfile.mkdtemp(prefix="crate-user-", dir=shared_tmp)
    os.chmod(home, 0o755)
    cli = CrateCLI(os.path.join(home, "store"), user=TEST_USER if is_root() else None, home=home)
    yield cli
    cli.cleanup()


@pytest.fixture(scope="session")
def crate_images(registry, image_layout, busybox_binary, busybox_refs):
    """Images for crate's tests in the anonymous registry, beside busybox_refs:
    config (Entrypoint echo, Cmd, User crate, WorkingDir, Env, StopSignal SIGQUIT), nocmd (no
    Entrypoint and no Cmd), and library/alpine:latest (the busybox image again) for the README's
    `crate run alpine` through a docker.io mirror."""
    config = oci_images.build_config_image(image_layout, busybox_binary)
    nocmd = image_layout.image([oci_images.busybox_rootfs_tar(busybox_binary)],
                               {"Env": [oci_images.PATH_ENV], "WorkingDir": "/"})
    return {
        "busybox": busybox_refs["latest"],
        "config": registry.push(image_layout, config, "library/config", "latest"),
        "nocmd": registry.push(image_layout, nocmd, "library/nocmd", "latest"),
        "alpine": registry.push(image_layout, image_layout.images["docker-index"], "library/alpine", "latest"),
    }


class PtySession:
    """A command on a real pseudo-terminal, driven as a user at a keyboard would."""

    def __init__(self, argv, rows=24, cols=80):
        import pty
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.resize(rows, cols)
        self.output = b""
        self.status = None

    def resize(self, rows, cols):
        import fcntl
        import struct
        import termios
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self, timeout):
        import select
        if select.select([self.fd], [], [], timeout)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            self.output += data
            return data
        return None

    def expect(self, text, timeout=20):
        """Read until `text` (bytes) appears after what was already matched; return the output."""
        start = getattr(self, "_mark", 0)
        deadline = time.monotonic() + timeout
        while text not in self.output[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen within {timeout}s; output: {self.output!r}")
            if self._read(0.1) == b"":
                raise AssertionError(f"{text!r} not seen before the end; output: {self.output!r}")
        self._mark = start + self.output[start:].index(text) + len(text)
        return self.output

    def send(self, data):
        os.write(self.fd, data)

    def wait(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05):
                    pass
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"still running after {timeout}s; output: {self.output!r}")

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def pty_session():
    """Factory: pty_session(argv, rows, cols) -> a PtySession, closed after the test."""
    sessions = []

    def start(argv, rows=24, cols=80):
        sessions.append(PtySession(argv, rows, cols))
        return sessions[-1]
    yield start
    for session in sessions:
        session.close()
