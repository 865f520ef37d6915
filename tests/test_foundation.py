"""The test bed itself: a real registry holds real busybox images; the CLIs answer --help."""
import gzip
import io
import json
import subprocess
import tarfile

import pytest
import requests

import oci_images

ACCEPT = ", ".join([oci_images.OCI_INDEX, oci_images.OCI_MANIFEST, oci_images.DOCKER_LIST,
                    oci_images.DOCKER_MANIFEST])


@pytest.mark.parametrize("program", ["crate", "crate-image", "crate-runc"])
def test_help_prints_usage(program):
    out = subprocess.run([program, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith(program) or "Usage:" in out.stdout
    assert f"{program} (-h | --help)" in out.stdout


@pytest.mark.parametrize("program", ["crate", "crate-image"])
def test_unknown_command_is_refused(program):
    out = subprocess.run([program, "frobnicate"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Usage:" in out.stdout + out.stderr


@pytest.mark.registry
def test_busybox_manifest_list_is_served(registry, busybox_refs):
    url = f"{registry.url}/v2/library/busybox/manifests/latest"
    r = requests.get(url, headers={"Accept": ACCEPT})
    r.raise_for_status()
    assert r.headers["Content-Type"] == oci_images.DOCKER_LIST
    listing = r.json()
    assert r.headers["Docker-Content-Digest"] == oci_images.sha256(r.content)
    platforms = {(m["platform"]["architecture"], m["platform"].get("variant")) for m in listing["manifests"]}
    assert platforms == {("amd64", None), ("arm64", "v8")}
    amd64 = next(m for m in listing["manifests"] if m["platform"]["architecture"] == "amd64")
    manifest = requests.get(f"{registry.url}/v2/library/busybox/manifests/{amd64['digest']}",
                            headers={"Accept": ACCEPT}).json()
    assert manifest["mediaType"] == oci_images.DOCKER_MANIFEST
    layer = manifest["layers"][0]
    blob = requests.get(f"{registry.url}/v2/library/busybox/blobs/{layer['digest']}").content
    assert oci_images.sha256(blob) == layer["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
        assert "bin/busybox" in names and "bin/sh" in names
        assert tar.extractfile("etc/crate-image").read() == b"amd64\n"
    config = json.loads(requests.get(
        f"{registry.url}/v2/library/busybox/blobs/{manifest['config']['digest']}").content)
    assert config["config"]["Cmd"] == ["/bin/sh"]


@pytest.mark.registry
def test_oci_index_and_single_manifests_are_served(registry, busybox_refs):
    for tag, media in [("oci-index", oci_images.OCI_INDEX), ("oci", oci_images.OCI_MANIFEST),
                       ("v2s2", oci_images.DOCKER_MANIFEST), ("uncompressed", oci_images.OCI_MANIFEST)]:
        r = requests.get(f"{registry.url}/v2/library/busybox/manifests/{tag}", headers={"Accept": ACCEPT})
        r.raise_for_status()
        assert r.headers["Content-Type"] == media, tag


@pytest.mark.registry
def test_basic_auth_registry_refuses_anonymous_and_accepts_credentials(basic_registry, image_layout):
    ref = basic_registry.push(image_layout, image_layout.images["oci-amd64"], "private/busybox", "v1")
    assert ref.endswith("private/busybox:v1")
    url = f"{basic_registry.url}/v2/private/busybox/manifests/v1"
    anonymous = requests.get(url, headers={"Accept": oci_images.OCI_MANIFEST})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    ok = requests.get(url, headers={"Accept": oci_images.OCI_MANIFEST}, auth=basic_registry.auth)
    assert ok.status_code == 200


@pytest.mark.registry
def test_registry_process_is_ours_and_alive(registry):
    assert registry.process.poll() is None
    with open(f"/proc/{registry.process.pid}/cmdline", "rb") as f:
        assert b"docker-registry" in f.read()
