"""crate-image pull against the real distribution registry: every manifest kind, platforms, the
store as an OCI layout that skopeo and umoci read, digests, resume, retries, concurrency, rmi/prune."""
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

import crate_schemas
import oci_images

pytestmark = pytest.mark.registry


def store_index(cli):
    with open(os.path.join(cli.root, "oci", "index.json")) as f:
        return json.load(f)


def stored_refs(cli):
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in store_index(cli)["manifests"]}


def blob_files(cli):
    d = os.path.join(cli.root, "oci", "blobs", "sha256")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def assert_store_verifies(cli):
    """Every blob hashes to its name; no temp debris."""
    d = os.path.join(cli.root, "oci", "blobs", "sha256")
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name
    assert os.listdir(os.path.join(cli.root, "tmp")) == []


def marker(cli, ref, tmp_path):
    target = tmp_path / ("unpack-" + hashlib.sha256(ref.encode()).hexdigest()[:8])
    cli("unpack", ref, str(target))
    return (target / "etc" / "crate-image").read_text().strip()


@pytest.mark.parametrize("tag,media", [
    ("latest", oci_images.DOCKER_LIST), ("oci-index", oci_images.OCI_INDEX), ("v2s2", oci_images.DOCKER_MANIFEST),
    ("oci", oci_images.OCI_MANIFEST), ("uncompressed", oci_images.OCI_MANIFEST)])
def test_pull_every_manifest_kind_into_an_oci_layout(image_cli, busybox_refs, tag, media, tmp_path):
    ref = busybox_refs[tag]
    out = image_cli("pull", ref)
    assert out.stdout.strip() == ref
    refs = stored_refs(image_cli)
    # stored as an OCI manifest (Docker ones converted, as skopeo copy --format oci does)
    assert refs[ref]["mediaType"] == oci_images.OCI_MANIFEST
    assert refs[ref]["platform"] == {"architecture": "amd64", "os": "linux"}
    with open(os.path.join(image_cli.root, "oci", "oci-layout")) as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    # the layout's documents are valid against the vendored image-spec schemas
    assert crate_schemas.first_error(store_index(image_cli), "image-index") is None
    with open(os.path.join(image_cli.root, "oci", "blobs", "sha256", refs[ref]["digest"][7:])) as f:
        assert crate_schemas.first_error(json.load(f), "image-manifest") is None
    assert_store_verifies(image_cli)
    assert marker(image_cli, ref, tmp_path) == "amd64"
    # the OCI layout is readable by skopeo and umoci
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{image_cli.root}/oci:{ref}"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == refs[ref]["digest"]
    bundle = tmp_path / "umoci-bundle"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    umoci = subprocess.run(["umoci", "unpack", *rootless, "--image", f"{image_cli.root}/oci:{ref}", str(bundle)],
                           capture_output=True, text=True)
    assert umoci.returncode == 0, umoci.stderr
    assert (bundle / "rootfs" / "etc" / "crate-image").read_text() == "amd64\n"


def test_zstd_layer(image_cli, registry, image_layout, busybox_binary, tmp_path):
    ref = registry.push(image_layout, oci_images.zstd_image(image_layout, busybox_binary), "library/busybox", "zstd")
    image_cli("pull", ref)
    info = json.loads(image_cli("inspect", ref).stdout)
    assert info["LayerMediaTypes"] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    assert marker(image_cli, ref, tmp_path) == "zstd"
    assert subprocess.run(["skopeo", "inspect", f"oci:{image_cli.root}/oci:{ref}"], capture_output=True).returncode == 0


def test_platform_choice_and_attestation_entries(image_cli, registry, image_layout, busybox_refs, tmp_path):
    ref = busybox_refs["latest"]
    image_cli("pull", "--platform", "linux/arm64/v8", ref)
    assert stored_refs(image_cli)[ref]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert marker(image_cli, ref, tmp_path) == "arm64"
    # arm64 without a variant means v8; the default is the host (amd64 here)
    image_cli("pull", "--platform", "linux/arm64", busybox_refs["oci-index"])
    assert stored_refs(image_cli)[busybox_refs["oci-index"]]["platform"]["architecture"] == "arm64"
    image_cli("pull", ref)
    assert stored_refs(image_cli)[ref]["platform"]["architecture"] == "amd64"
    # no match: a clear error naming what there is, nothing stored for it
    bad = image_cli("pull", "--platform", "linux/s390x", busybox_refs["oci-index"], check=False)
    assert bad.returncode != 0
    assert bad.stderr.startswith("crate-image: no image for platform linux/s390x")
    assert "linux/amd64" in bad.stderr and "linux/arm64/v8" in bad.stderr and "--platform" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = image_cli("pull", "--platform", "linux/arm64", busybox_refs["v2s2"], check=False)
    assert bad.returncode != 0 and "is for linux/amd64" in bad.stderr
    bad = image_cli("pull", "--platform", "linux//", busybox_refs["v2s2"], check=False)
    assert bad.returncode != 0 and "invalid platform" in bad.stderr
    # attestation manifests (unknown/unknown) in an index are skipped
    imgs = image_layout.images
    index = oci_images.attestation_index(image_layout, [imgs["oci-amd64"]])
    att_ref = registry.push(image_layout, index, "library/busybox", "attest")
    image_cli("pull", att_ref)
    assert stored_refs(image_cli)[att_ref]["digest"] == imgs["oci-amd64"]["digest"]
    only_att = registry.push(image_layout, oci_images.attestation_index(image_layout, []), "library/busybox", "only-attest")
    bad = image_cli("pull", only_att, check=False)
    assert bad.returncode != 0 and "no image for platform" in bad.stderr and "available: none" in bad.stderr


def test_pull_by_digest_and_repull_does_no_blob_work(image_cli, faulty_proxy, busybox_refs, registry):
    index_digest = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                   f"docker://{busybox_refs['latest']}"], capture_output=True).stdout
    digest = "sha256:" + hashlib.sha256(index_digest).hexdigest()
    ref = f"{faulty_proxy.host}/library/busybox@{digest}"
    out = image_cli("pull", ref)
    assert out.stdout.strip() == ref
    assert any("/blobs/" in path for _, path, _ in faulty_proxy.log)
    faulty_proxy.log.clear()
    again = image_cli("pull", ref)
    assert "Already exists" in again.stderr
    assert [p for _, p, _ in faulty_proxy.log if "/blobs/" in p] == []
    # a tag of the same content is also known: only manifests are fetched
    faulty_proxy.log.clear()
    image_cli("pull", f"{faulty_proxy.host}/library/busybox:latest")
    assert [p for _, p, _ in faulty_proxy.log if "/blobs/" in p] == []
    bad = image_cli("pull", f"{registry.host}/library/busybox@sha256:{'0' * 64}", check=False)
    assert bad.returncode != 0 and "not found" in bad.stderr


def test_digest_mismatch_is_rejected_with_nothing_stored(image_cli, faulty_proxy, busybox_refs):
    faulty_proxy.mode = "corrupt"
    ref = f"{faulty_proxy.host}/library/busybox:v2s2"
    out = image_cli("pull", ref, check=False)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("crate-image: ") and "hashes to" in line and "nothing was stored" in line
    # no blob (not even the verified config: it lands after the layers), no layer, no ref, no debris
    assert stored_refs(image_cli) == {}
    assert blob_files(image_cli) == []
    assert os.listdir(os.path.join(image_cli.root, "layers", "sha256")) == []
    assert os.listdir(os.path.join(image_cli.root, "tmp")) == []
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                          f"docker://{busybox_refs['v2s2']}"], capture_output=True).stdout)
    layer_hex = manifest["layers"][0]["digest"][7:]
    assert layer_hex not in blob_files(image_cli)


def test_dropped_connection_resumes_with_range(image_cli, faulty_proxy, busybox_refs, tmp_path):
    faulty_proxy.mode = "drop"
    ref = f"{faulty_proxy.host}/library/busybox:oci"
    image_cli("pull", ref)
    ranges = [(path, rng) for method, path, rng in faulty_proxy.log if rng]
    assert ranges and all("/blobs/sha256:" in p and rng.startswith("bytes=") and rng != "bytes=0-"
                          for p, rng in ranges)
    assert faulty_proxy.dropped
    assert_store_verifies(image_cli)
    assert marker(image_cli, ref, tmp_path) == "amd64"


def test_retries_on_503_and_429(image_cli, faulty_proxy, busybox_refs):
    faulty_proxy.mode = "flaky"
    ref = f"{faulty_proxy.host}/library/busybox:latest"
    image_cli("pull", ref)
    assert any(n == 2 for n in faulty_proxy.failures.values())
    assert_store_verifies(image_cli)


def test_concurrent_pulls_of_the_same_image(image_cli, busybox_refs, edge_case_ref):
    procs = [subprocess.Popen(["crate-image", "pull", "-q", ref], env=image_cli.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for ref in [edge_case_ref] * 4 + [busybox_refs["latest"]] * 2]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all(rc == 0 for rc, _, _ in results), results
    assert set(stored_refs(image_cli)) == {edge_case_ref, busybox_refs["latest"]}
    assert len(store_index(image_cli)["manifests"]) == 2
    assert_store_verifies(image_cli)
    info = json.loads(image_cli("inspect", edge_case_ref).stdout)
    layers = sorted(os.listdir(os.path.join(image_cli.root, "layers", "sha256")))
    assert set(d[7:] for d in info["DiffIds"]) <= set(layers)


def test_rmi_and_prune(image_cli, busybox_refs, edge_case_ref):
    image_cli("pull", busybox_refs["v2s2"])
    image_cli("pull", busybox_refs["oci"])         # same layer and config as v2s2
    image_cli("pull", edge_case_ref)
    before = blob_files(image_cli)
    out = image_cli("rmi", edge_case_ref)
    assert out.stdout.strip() == f"Untagged: {edge_case_ref}"
    assert edge_case_ref not in stored_refs(image_cli)
    assert blob_files(image_cli) == before          # rmi only untags
    out = image_cli("prune")
    assert out.stdout.startswith("Deleted ")
    after = blob_files(image_cli)
    assert len(after) < len(before)
    # what is left still works for crate, skopeo and umoci
    for ref in (busybox_refs["v2s2"], busybox_refs["oci"]):
        assert subprocess.run(["skopeo", "inspect", f"oci:{image_cli.root}/oci:{ref}"],
                              capture_output=True).returncode == 0
    assert_store_verifies(image_cli)
    layers_left = os.listdir(os.path.join(image_cli.root, "layers", "sha256"))
    assert len(layers_left) == 1
    bad = image_cli("rmi", edge_case_ref, check=False)
    assert bad.returncode == 1 and "no image" in bad.stderr and "crate-image pull" in bad.stderr
    # v2s2 converted to OCI is byte for byte the oci image: an id prefix names both, so it is refused
    image_id = json.loads(image_cli("inspect", busybox_refs["v2s2"]).stdout)["Id"][7:19]
    bad = image_cli("rmi", image_id, check=False)
    assert bad.returncode == 1 and "matches 2 image names" in bad.stderr and "use a name" in bad.stderr
    image_cli("rmi", busybox_refs["v2s2"])
    image_cli("rmi", image_id)
    image_cli("prune")
    assert blob_files(image_cli) == []
    assert os.listdir(os.path.join(image_cli.root, "layers", "sha256")) == []
    assert store_index(image_cli)["manifests"] == []


def test_a_layout_written_by_skopeo_is_usable(image_cli, busybox_refs, tmp_path):
    layout = f"{image_cli.root}/oci"
    os.makedirs(image_cli.root)
    copy = subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                           f"docker://{busybox_refs['latest']}", f"oci:{layout}:mybusybox"],
                          capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    listing = json.loads(image_cli("images", "--format", "json").stdout)
    assert [r["name"] for r in listing] == ["mybusybox"]
    assert marker(image_cli, "mybusybox", tmp_path) == "amd64"
    info = json.loads(image_cli("inspect", "mybusybox").stdout)
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    # skopeo copy --all keeps the whole index: crate takes this host's image from it
    copy = subprocess.run(["skopeo", "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
                           f"docker://{busybox_refs['oci-index']}", f"oci:{layout}:multi"],
                          capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    assert marker(image_cli, "multi", tmp_path) == "amd64"
    assert json.loads(image_cli("inspect", "multi").stdout)["Architecture"] == "amd64"


def test_images_and_inspect_output(image_cli, busybox_refs):
    assert image_cli("images").stdout.split() == ["NAME", "IMAGE", "ID", "CREATED", "SIZE", "PLATFORM"]
    image_cli("pull", "-q", busybox_refs["oci"])
    table = image_cli("images").stdout.splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "ID", "CREATED", "SIZE", "PLATFORM"]
    assert table[1].startswith(busybox_refs["oci"]) and "linux/amd64" in table[1]
    rows = json.loads(image_cli("images", "--format", "json").stdout)
    assert rows[0]["name"] == busybox_refs["oci"] and rows[0]["platform"] == "linux/amd64"
    ids = image_cli("images", "-q").stdout.split()
    assert ids == [rows[0]["id"][7:19]]
    info = json.loads(image_cli("inspect", ids[0]).stdout)
    assert info["Name"] == busybox_refs["oci"]
    assert info["Config"]["Cmd"] == ["/bin/sh"]
    bad = image_cli("images", "--format", "yaml", check=False)
    assert bad.returncode == 1 and "use --format table or --format json" in bad.stderr


@pytest.mark.parametrize("ref,why", [
    ("Busybox", "lowercase"), ("busybox:", "tag"), ("busybox@sha256:abc", "digest"), ("a b", "white space")])
def test_invalid_references_get_a_clear_error(image_cli, ref, why):
    out = image_cli("pull", ref, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith(f"crate-image: invalid image reference {ref!r}") and why in out.stderr
    assert "; use NAME[:TAG]" in out.stderr
    assert not os.path.exists(os.path.join(image_cli.root, "oci", "blobs", "sha256")) or blob_files(image_cli) == []


def test_missing_image_and_unreachable_registry(image_cli, registry):
    out = image_cli("pull", f"{registry.host}/library/nothing:here", check=False)
    assert out.returncode == 1 and "not found" in out.stderr
    out = image_cli("pull", "127.0.0.1:1/library/busybox", check=False, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("crate-image: ") and "127.0.0.1:1" in out.stderr


def test_progress_lines_bars_and_quiet(image_cli, busybox_refs, tmp_path):
    out = image_cli("pull", busybox_refs["v2s2"])
    assert "Pulling fs layer" in out.stderr and "Pull complete" in out.stderr and "Digest: sha256:" in out.stderr
    assert "\x1b[" not in out.stderr
    image_cli("rmi", busybox_refs["v2s2"])
    image_cli("prune")
    quiet = image_cli("pull", "-q", busybox_refs["v2s2"])
    assert quiet.stderr == "" and quiet.stdout.strip() == busybox_refs["v2s2"]
    image_cli("rmi", busybox_refs["v2s2"])
    image_cli("prune")
    # on a terminal: live bars redrawn in place
    script = subprocess.run(["script", "-qec", f"crate-image pull {busybox_refs['v2s2']}", "/dev/null"],
                            capture_output=True, text=True, env=image_cli.env)
    assert script.returncode == 0, script.stdout
    assert "\x1b[" in script.stdout and "Pull complete" in script.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_pull_leaves_nothing_half_made(image_cli, faulty_proxy, busybox_refs, sig):
    faulty_proxy.mode = "slow"
    ref = f"{faulty_proxy.host}/library/busybox:v2s2"
    proc = subprocess.Popen(["crate-image", "pull", ref], env=image_cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any("/blobs/" in p and "sha256:" in p for _, p, _ in faulty_proxy.log[1:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # mid-download
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "interrupted" in err
    assert stored_refs(image_cli) == {}
    assert os.listdir(os.path.join(image_cli.root, "tmp")) == []
    assert os.listdir(os.path.join(image_cli.root, "layers", "sha256")) == []


def test_prune_waits_for_a_running_pull(image_cli, faulty_proxy, busybox_refs):
    faulty_proxy.mode = "slow"
    ref = f"{faulty_proxy.host}/library/busybox:oci"
    pull = subprocess.Popen(["crate-image", "pull", "-q", ref], env=image_cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any("/blobs/" in p and "sha256:" in p for _, p, _ in faulty_proxy.log):
        assert time.monotonic() < deadline and pull.poll() is None
        time.sleep(0.05)
    prune = image_cli("prune")  # blocks on the store's gc lock until the pull is done
    assert pull.wait(60) == 0, pull.stderr.read()
    pull.stdout.close()
    pull.stderr.close()
    assert prune.stdout.startswith("Deleted 0 blobs and 0 extracted layers")
    assert ref in stored_refs(image_cli)
    assert_store_verifies(image_cli)


def test_a_mirror_that_is_down_falls_back_to_the_registry(image_cli, registry, busybox_refs):
    with open(image_cli.registries_conf, "w") as f:
        f.write(f'[registries."{registry.host}"]\nmirrors = ["127.0.0.1:1"]\n')
    image_cli("pull", busybox_refs["v2s2"], timeout=120)
    assert busybox_refs["v2s2"] in stored_refs(image_cli)
