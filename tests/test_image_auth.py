"""crate-image against registries that want credentials: Basic (htpasswd) and Bearer tokens from a
token server (GET and POST grants, token reuse), credential files and helpers, login/logout,
redirects to blob storage, mirrors and the HTTPS-by-default rule."""
import base64
import json
import os
import socket
import stat
import threading

import pytest

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def basic_ref(basic_registry, image_layout):
    return basic_registry.push(image_layout, image_layout.images["docker-index"], "private/busybox", "latest")


@pytest.fixture(scope="module")
def token_refs(token_registry, image_layout):
    imgs = image_layout.images
    return {"public": token_registry.push(image_layout, imgs["docker-index"], "library/busybox", "latest"),
            "private": token_registry.push(image_layout, imgs["oci-amd64"], "private/busybox", "latest")}


def write_json(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_basic_auth_login_pull_logout(image_cli, basic_registry, basic_ref):
    host = basic_registry.host
    out = image_cli("pull", basic_ref, check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == f"crate-image: {host} requires a login; run crate-image login {host}"
    bad = image_cli("login", "--username", "crate", "--password-stdin", host, input="wrong\n", check=False)
    assert bad.returncode == 1 and "refused" in bad.stderr
    assert not os.path.exists(os.path.join(image_cli.home, ".docker", "config.json"))
    ok = image_cli("login", "--username", "crate", "--password-stdin", host, input="crate-secret\n")
    assert "Login Succeeded" in ok.stdout
    config = os.path.join(image_cli.home, ".docker", "config.json")
    with open(config) as f:
        entry = json.load(f)["auths"][host]
    assert base64.b64decode(entry["auth"]).decode() == "crate:crate-secret"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    image_cli("pull", basic_ref)
    assert image_cli("logout", host).stdout.strip() == f"Removed login credentials for {host}"
    image_cli("rmi", basic_ref)
    out = image_cli("pull", basic_ref, check=False)
    assert out.returncode == 1 and "requires a login" in out.stderr
    again = image_cli("logout", host, check=False)
    assert again.returncode == 1 and "not logged in" in again.stderr


def test_basic_auth_from_containers_auth_json_and_creds_flag(image_cli, basic_registry, basic_ref):
    write_json(image_cli.authfile, {"auths": {basic_registry.host: {
        "auth": base64.b64encode(b"crate:crate-secret").decode()}}})
    image_cli("pull", basic_ref)
    os.unlink(image_cli.authfile)
    image_cli("rmi", basic_ref)
    image_cli("pull", "--creds", "crate:crate-secret", basic_ref)
    out = image_cli("pull", "--creds", "crate:nope", basic_ref, check=False)
    assert out.returncode == 1 and "crate-image login" in out.stderr


def test_credential_helper(image_cli, basic_registry, basic_ref, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-cratetest"
    log = tmp_path / "helper.log"
    helper.write_text("#!/bin/sh\nread server\necho \"$1 $server\" >> %s\n"
                      "printf '{\"ServerURL\":\"%%s\",\"Username\":\"crate\",\"Secret\":\"crate-secret\"}' \"$server\"\n"
                      % log)
    helper.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    write_json(os.path.join(image_cli.home, ".docker", "config.json"),
               {"credHelpers": {basic_registry.host: "cratetest"}})
    image_cli("pull", basic_ref, env=env)
    assert log.read_text().splitlines()[0] == f"get {basic_registry.host}"
    # credsStore for every registry; a missing helper is named in the error
    image_cli("rmi", basic_ref)
    write_json(os.path.join(image_cli.home, ".docker", "config.json"), {"credsStore": "cratetest"})
    image_cli("pull", basic_ref, env=env)
    write_json(os.path.join(image_cli.home, ".docker", "config.json"), {"credsStore": "absent"})
    image_cli("rmi", basic_ref)
    out = image_cli("pull", basic_ref, check=False)
    assert out.returncode == 1 and "docker-credential-absent" in out.stderr and "not installed" in out.stderr


def test_bearer_token_anonymous_pull_reuses_the_token(image_cli, token_registry, token_refs):
    server = token_registry.token_server
    server.requests.clear()
    image_cli("pull", token_refs["public"])
    grants = [r for r in server.requests if r[3]]
    # one token for the repository serves the index, manifest, config and layer requests
    assert grants == [("GET", None, None, ["repository:library/busybox:pull"])]


def test_bearer_private_repository_needs_login(image_cli, token_registry, token_refs):
    host = token_registry.host
    out = image_cli("pull", token_refs["private"], check=False)
    assert out.returncode == 1
    assert out.stderr.startswith(f"crate-image: {host} refused access to private/busybox (not logged in)")
    image_cli("login", "--username", "crate", "--password", "crate-secret", host)
    server = token_registry.token_server
    server.requests.clear()
    image_cli("pull", token_refs["private"])
    assert ("GET", None, "crate", ["repository:private/busybox:pull"]) in server.requests
    bad = image_cli("login", "--username", "crate", "--password", "wrong", host, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("crate-image: the token server")


def test_bearer_post_grants(image_cli, token_registry, token_refs):
    server = token_registry.token_server
    # an identity token (docker's "<token>" user) is exchanged with a POST refresh_token grant
    write_json(image_cli.authfile, {"auths": {token_registry.host: {"identitytoken": "crate-refresh-token"}}})
    server.requests.clear()
    image_cli("pull", token_refs["private"])
    assert [r[:3] for r in server.requests if r[3]] == [("POST", "refresh_token", "crate")]
    # a realm that refuses GET gets the OAuth2 password grant
    write_json(image_cli.authfile, {"auths": {token_registry.host: {
        "auth": base64.b64encode(b"crate:crate-secret").decode()}}})
    image_cli("rmi", token_refs["private"])
    server.post_only = True
    try:
        server.requests.clear()
        image_cli("pull", token_refs["private"])
    finally:
        server.post_only = False
    assert ("POST", "password", "crate", ["repository:private/busybox:pull"]) in server.requests


def test_redirect_to_blob_storage_drops_authorization(image_cli, faulty_proxy, busybox_refs, image_layout):
    faulty_proxy.mode = "redirect"
    faulty_proxy.blob_dir = os.path.join(image_layout.path, "blobs")
    ref = f"{faulty_proxy.host}/library/busybox:v2s2"
    write_json(image_cli.authfile, {"auths": {faulty_proxy.host: {
        "auth": base64.b64encode(b"crate:crate-secret").decode()}}})
    faulty_proxy.require_basic = "crate:crate-secret"
    image_cli("pull", ref)
    assert "Basic " + base64.b64encode(b"crate:crate-secret").decode() in faulty_proxy.authorizations
    assert faulty_proxy.storage_headers, "blobs were not fetched from the storage server"
    assert all("Authorization" not in h for h in faulty_proxy.storage_headers)


def test_mirror_serves_docker_hub_names(image_cli, registry, busybox_refs, tmp_path):
    with open(image_cli.registries_conf, "w") as f:
        f.write(f'[registries."docker.io"]\nmirrors = ["{registry.host}"]\n')
    out = image_cli("pull", "busybox")
    assert out.stdout.strip() == "docker.io/library/busybox:latest"
    target = tmp_path / "rootfs"
    image_cli("unpack", "busybox", str(target))
    assert (target / "etc" / "crate-image").read_text() == "amd64\n"
    with open(image_cli.registries_conf, "w") as f:
        f.write('[registries."docker.io"]\nmirrors = ["http://mirror.example:5000"]\n')
    out = image_cli("pull", "busybox", check=False)
    assert out.returncode == 1 and "not marked insecure" in out.stderr
    with open(image_cli.registries_conf, "w") as f:
        f.write('[registries."docker.io"]\nmirrorz = []\n')
    out = image_cli("pull", "busybox", check=False)
    assert out.returncode == 1 and "unknown key(s) mirrorz" in out.stderr


class Forwarder:
    """A TCP forwarder on 127.0.0.2 (not a local name for crate-image) to the registry."""

    def __init__(self, target_port):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.target = target_port
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_https_by_default_plain_http_only_when_insecure(image_cli, registry, busybox_refs):
    fwd = Forwarder(registry.port)
    try:
        host = f"127.0.0.2:{fwd.port}"
        out = image_cli("pull", f"{host}/library/busybox:v2s2", check=False)
        assert out.returncode == 1
        assert f"TLS to {host} failed" in out.stderr and "insecure" in out.stderr
        with open(image_cli.registries_conf, "w") as f:
            f.write(f'[registries."{host}"]\ninsecure = true\n')
        image_cli("pull", f"{host}/library/busybox:v2s2")
    finally:
        fwd.close()
