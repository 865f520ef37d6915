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
