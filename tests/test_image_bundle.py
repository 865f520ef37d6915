"""Bundles: config.json from the image config (image-spec conversion), valid against the vendored
schema, rootful (overlay rootfs) and rootless (user namespace, flattened rootfs), run by real runc."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

import crate_schemas
import oci_images
from crate_image import bundle as bundles
from crate_image.errors import ImageError
from crate_image.rootless import IdMap

TEST_USER = os.environ.get("CRATE_TEST_USER", "crate-test")
IMAGE_CONFIG = {"os": "linux", "architecture": "amd64", "created": oci_images.CREATED, "author": "crate tests",
                "config": dict(oci_images.CONFIG_IMAGE_CONFIG)}


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(oci_images.PASSWD)
    (root / "etc" / "group").write_text(oci_images.GROUP)
    return str(root)


def test_conversion_rules(rootfs):
    config = bundles.runtime_config(IMAGE_CONFIG, rootfs)
    assert crate_schemas.first_error(config, "runtime-config") is None
    proc = config["process"]
    assert proc["args"] == ["/bin/echo", "entrypoint:", "default", "cmd"]
    assert proc["env"][:3] == [oci_images.PATH_ENV, "FOO=bar", "EMPTY="]
    assert "HOME=/home/crate" in proc["env"]
    assert proc["cwd"] == "/home/crate"
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    ann = config["annotations"]
    assert ann["org.opencontainers.image.stopSignal"] == "SIGQUIT"
    assert ann["org.example.test"] == "crate"
    assert ann["org.opencontainers.image.exposedPorts"] == "8080/tcp"
    assert ann["org.opencontainers.image.author"] == "crate tests"
    assert ann["org.opencontainers.image.architecture"] == "amd64"
    assert {"type": "network"} in config["linux"]["namespaces"]
    assert {"type": "user"} not in config["linux"]["namespaces"]
    assert config["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert config["root"] == {"path": "rootfs", "readonly": False}


@pytest.mark.parametrize("user,expected", [
    ("crate", {"uid": 1000, "gid": 1000, "additionalGids": [2000]}),
    ("crate:extra", {"uid": 1000, "gid": 2000}),
    ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [2000]}),
    ("4242", {"uid": 4242, "gid": 0}),
    ("4242:7", {"uid": 4242, "gid": 7}),
    ("nobody:nogroup", {"uid": 65534, "gid": 65534}),
    ("", {"uid": 0, "gid": 0}),
])
def test_user_resolution(rootfs, user, expected):
    assert bundles.runtime_config(IMAGE_CONFIG, rootfs, user=user)["process"]["user"] == expected


def test_image_without_passwd(tmp_path):
    config = bundles.runtime_config({"config": {"Cmd": ["/app"]}}, str(tmp_path))
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert "HOME=/" in config["process"]["env"]
    assert bundles.runtime_config({"config": {"Cmd": ["/app"], "User": "123:45"}},
                                  str(tmp_path))["process"]["user"] == {"uid": 123, "gid": 45}
    with pytest.raises(ImageError, match="not in its /etc/passwd"):
        bundles.runtime_config({"config": {"Cmd": ["/app"], "User": "app"}}, str(tmp_path))


def test_user_resolution_errors_and_escaping_passwd(rootfs, tmp_path):
    with pytest.raises(ImageError, match="user 'ghost' of the image is not in its /etc/passwd"):
        bundles.runtime_config(IMAGE_CONFIG, rootfs, user="ghost")
    with pytest.raises(ImageError, match="group 'ghosts'"):
        bundles.runtime_config(IMAGE_CONFIG, rootfs, user="crate:ghosts")
    # an /etc/passwd that is a symlink out of the rootfs is read inside it (here: not at all)
    os.unlink(os.path.join(rootfs, "etc", "passwd"))
    os.symlink("/etc/passwd", os.path.join(rootfs, "etc", "passwd"))
    with pytest.raises(ImageError, match="not in its /etc/passwd"):
        bundles.runtime_config(IMAGE_CONFIG, rootfs, user="root")


def test_overrides_and_defaults(rootfs):
    cfg = {"os": "linux", "architecture": "amd64", "config": {"Cmd": ["sh"]}}
    config = bundles.runtime_config(cfg, rootfs, env=["A=1"], terminal=True)
    assert config["process"]["env"] == [f"PATH={bundles.DEFAULT_PATH}", "A=1", "HOME=/root", "TERM=xterm"]
    assert config["process"]["cwd"] == "/" and config["process"]["terminal"] is True
    config = bundles.runtime_config(IMAGE_CONFIG, rootfs, args=["x"], workdir="/tmp", env=["FOO=baz"])
    assert config["process"]["args"] == ["/bin/echo", "entrypoint:", "x"]
    assert "FOO=baz" in config["process"]["env"] and "FOO=bar" not in config["process"]["env"]
    config = bundles.runtime_config(IMAGE_CONFIG, rootfs, entrypoint=["/bin/sh"])
    assert config["process"]["args"] == ["/bin/sh"]
    with pytest.raises(ImageError, match="neither Entrypoint nor Cmd"):
        bundles.runtime_config({"config": {}}, rootfs)


def test_rootless_variant(rootfs):
    maps = ([IdMap(0, 1234, 1), IdMap(1, 200000, 65536)],
            [IdMap(0, 1234, 1), IdMap(1, 200000, 65536)])
    config = bundles.runtime_config(IMAGE_CONFIG, rootfs, rootless=True, mappings=maps)
    assert crate_schemas.first_error(config, "runtime-config") is None
    linux = config["linux"]
    assert {"type": "user"} in linux["namespaces"] and {"type": "network"} not in linux["namespaces"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1234, "size": 1},
                                    {"containerID": 1, "hostID": 200000, "size": 65536}]
    assert "resources" not in linux
    mounts = {m["destination"]: m for m in config["mounts"]}
    assert mounts["/sys"]["type"] == "none" and "rbind" in mounts["/sys"]["options"]
    assert not any(o.startswith("gid=") for o in mounts["/dev/pts"]["options"])


# ------------------------------------------------------------------ end to end with runc
@pytest.fixture(scope="module")
def config_ref(registry, image_layout, busybox_binary):
    return registry.push(image_layout, oci_images.build_config_image(image_layout, busybox_binary),
                         "library/config", "latest")


def runc_run(bundle, state, cid="crate-image-test"):
    return subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.root
@pytest.mark.registry
def test_rootful_overlay_bundle_runs_with_runc(image_cli, config_ref, tmp_path):
    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    image_cli("pull", config_ref)
    bundle = tmp_path / "bundle"
    assert image_cli("bundle", config_ref, str(bundle)).stdout.strip() == str(bundle)
    try:
        with open(bundle / "config.json") as f:
            config = json.load(f)
        assert crate_schemas.first_error(config, "runtime-config") is None
        assert bundles.is_mountpoint(str(bundle / "rootfs"))
        out = runc_run(bundle, tmp_path / "runc")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "entrypoint: default cmd\n"
    finally:
        image_cli("unbundle", str(bundle))
    assert not bundle.exists() and not bundles.is_mountpoint(str(bundle / "rootfs"))
    # a shell as the image's user, writing into the overlay's upper dir only
    bundle2 = tmp_path / "bundle2"
    image_cli("bundle", "--entrypoint", "/bin/sh", config_ref, str(bundle2), "--", "-c",
              "id -u; id -g; id -G; pwd; echo $FOO; echo hi > /tmp/written")
    try:
        out = runc_run(bundle2, tmp_path / "runc", "crate-image-test2")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1000", "1000", "1000", "2000", "/home/crate", "bar"]
        assert (bundle2 / "overlay" / "upper" / "tmp" / "written").read_text() == "hi\n"
        info = json.loads(image_cli("inspect", config_ref).stdout)
        layer = os.path.join(image_cli.root, "layers", "sha256", info["DiffIds"][0][7:])
        assert not os.path.exists(os.path.join(layer, "tmp", "written"))
        # the bundle keeps its layers through rmi + prune
        image_cli("rmi", config_ref)
        image_cli("prune")
        assert os.path.isdir(layer)
        bad = image_cli("bundle", config_ref, str(tmp_path / "b3"), check=False)
        assert bad.returncode == 1 and "pull it first" in bad.stderr
        assert not (tmp_path / "b3").exists()
    finally:
        image_cli("unbundle", str(bundle2))
    image_cli("prune")
    assert not os.path.isdir(layer)


@pytest.mark.root
@pytest.mark.registry
def test_copy_bundle_and_bad_targets(image_cli, config_ref, tmp_path):
    image_cli("pull", "-q", config_ref)
    bundle = tmp_path / "copy"
    image_cli("bundle", "--copy", config_ref, str(bundle))
    assert not bundles.is_mountpoint(str(bundle / "rootfs"))
    assert (bundle / "rootfs" / "bin" / "busybox").exists()
    out = runc_run(bundle, tmp_path / "runc", "crate-image-copy")
    assert out.returncode == 0 and out.stdout == "entrypoint: default cmd\n", out.stderr
    image_cli("unbundle", str(bundle))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine\n")
    bad = image_cli("bundle", config_ref, str(busy), check=False)
    assert bad.returncode == 1 and "already exists and is not an empty directory" in bad.stderr
    assert os.listdir(busy) == ["keep"]
    bad = image_cli("bundle", config_ref, str(tmp_path / "no" / "such" / "dir"), check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    bad = image_cli("bundle", "--user", "ghost", config_ref, str(tmp_path / "ghost"), check=False)
    assert bad.returncode == 1 and "ghost" in bad.stderr
    assert not (tmp_path / "ghost").exists()
    assert not any(bundles.is_mountpoint(os.path.join(tmp_path, d, "rootfs")) for d in os.listdir(tmp_path))
    assert os.listdir(os.path.join(image_cli.root, "bundles")) == []
    # unbundle removes only what crate-image made
    bad = image_cli("unbundle", str(busy), check=False)
    assert bad.returncode == 1 and "was not made by crate-image" in bad.stderr
    assert (busy / "keep").read_text() == "mine\n"
    flat = tmp_path / "flat"
    image_cli("unpack", config_ref, str(flat))
    image_cli("unbundle", str(flat))
    assert not flat.exists()


# ------------------------------------------------------------------ rootless, as the test user
@pytest.fixture
def user_dir():
    d = tempfile.mkdtemp(prefix="crate-image-rootless-")
    os.chmod(d, 0o755)
    shutil.chown(d, TEST_USER, TEST_USER)
    yield d
    subprocess.run(["setpriv", "--reuid", TEST_USER, "--regid", TEST_USER, "--clear-groups", "crate-image",
                    "--root", os.path.join(d, "store"), "prune"], capture_output=True,
                   env=dict(os.environ, HOME=d))
    # what is left (owned by subordinate ids) goes as root
    shutil.rmtree(d, ignore_errors=True)


def as_user(user_dir, *args, check=True):
    env = {"PATH": os.environ["PATH"], "HOME": user_dir, "CRATE_ROOT": os.path.join(user_dir, "store"),
           "REGISTRY_AUTH_FILE": os.path.join(user_dir, "auth.json"),
           "CRATE_REGISTRIES_CONF": os.path.join(user_dir, "registries.toml")}
    out = subprocess.run(["setpriv", "--reuid", TEST_USER, "--regid", TEST_USER, "--clear-groups", *args],
                         capture_output=True, text=True, env=env, cwd=user_dir, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} as {TEST_USER} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def subordinate_start():
    with open("/etc/subuid") as f:
        for line in f:
            name, start, _ = line.strip().split(":")
            if name == TEST_USER:
                return int(start)
    pytest.skip(f"{TEST_USER} has no subordinate uid range")


@pytest.mark.root
@pytest.mark.userns
@pytest.mark.registry
def test_rootless_pull_bundle_and_run(user_dir, edge_case_ref, config_ref):
    start = subordinate_start()
    import pwd
    uid = pwd.getpwnam(TEST_USER).pw_uid
    store = os.path.join(user_dir, "store")
    as_user(user_dir, "crate-image", "pull", config_ref)
    # image uid 1000 is subordinate id start+999 on the host; uid 0 is the user itself
    layers_dir = os.path.join(store, "layers", "sha256")
    (layer,) = os.listdir(layers_dir)
    st = os.stat(os.path.join(layers_dir, layer, "home", "crate"))
    assert (st.st_uid, st.st_gid) == (start + 999, start + 999)
    assert os.stat(os.path.join(layers_dir, layer, "bin", "busybox")).st_uid == uid
    bundle = os.path.join(user_dir, "bundle")
    as_user(user_dir, "crate-image", "bundle", config_ref, bundle)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    assert config["linux"]["uidMappings"][0] == {"containerID": 0, "hostID": uid, "size": 1}
    assert config["linux"]["uidMappings"][1]["hostID"] == start
    assert {"type": "user"} in config["linux"]["namespaces"] and "resources" not in config["linux"]
    if shutil.which("runc"):
        out = as_user(user_dir, "runc", "--root", os.path.join(user_dir, "runc"), "run", "--bundle", bundle,
                      "crate-image-rootless", check=False)
        assert out.returncode == 0 and out.stdout == "entrypoint: default cmd\n", out.stderr
    as_user(user_dir, "crate-image", "unbundle", bundle)
    assert not os.path.exists(bundle)
    # an overlay bundle needs a mount the user cannot make outside a namespace: a clear error
    bad = as_user(user_dir, "crate-image", "bundle", "--overlay", config_ref, bundle, check=False)
    assert bad.returncode == 1 and "--copy" in bad.stderr and not os.path.exists(bundle)
    as_user(user_dir, "crate-image", "rmi", config_ref)
    as_user(user_dir, "crate-image", "prune")
    assert os.listdir(layers_dir) == []


ROOTLESS_OVERLAY = r"""
import json, os, sys
from crate_image import api, bundle, rootless
sys.path.insert(0, sys.argv[2])
import oci_images

def inside():
    img = api.image(sys.argv[1])
    base = os.path.join(os.environ["HOME"], "ovl")
    for d in ("upper", "work", "merged"):
        os.makedirs(os.path.join(base, d))
    bundle.mount_overlay(img.layer_dirs, base + "/upper", base + "/work", base + "/merged", userxattr=True)
    merged = oci_images.list_tree(base + "/merged")
    flat = os.path.join(os.environ["HOME"], "flat")
    api.unpack(sys.argv[1], flat)
    return merged, oci_images.list_tree(flat)

print(json.dumps(rootless.run(inside, mount_ns=True)))
"""


@pytest.mark.root
@pytest.mark.userns
@pytest.mark.registry
def test_rootless_layers_mount_as_overlay_in_a_user_namespace(user_dir, edge_case_ref):
    """Rootless layers carry user.overlay.* markers: an overlay with userxattr inside the user's
    namespace shows the same tree as the flattened copy."""
    as_user(user_dir, "crate-image", "pull", edge_case_ref)
    script = os.path.join(user_dir, "overlay.py")
    with open(script, "w") as f:
        f.write(ROOTLESS_OVERLAY)
    tests_dir = os.path.join(user_dir, "tests")
    os.mkdir(tests_dir)
    shutil.copy(oci_images.__file__, tests_dir)
    python = shutil.which("python3", path=os.path.dirname(shutil.which("crate-image")))
    out = as_user(user_dir, python, script, edge_case_ref, tests_dir)
    merged, flat = json.loads(out.stdout)
    assert merged == flat
    assert any(line.startswith("data/opaque/new.txt ") for line in flat)
    assert not any(line.startswith("data/opaque/a.txt ") for line in flat)
    assert any(line.startswith("data/owned/file.txt f 0644 1000:1000") for line in flat)


@pytest.mark.root
@pytest.mark.registry
def test_falls_back_to_a_copy_where_overlay_is_unavailable(image_cli, config_ref, tmp_path):
    """An overlay upper dir cannot live on another overlay: auto falls back to a flattened copy,
    --overlay says so and leaves nothing."""
    image_cli("pull", "-q", config_ref)
    outer = tmp_path / "outer"
    image_cli("bundle", config_ref, str(outer))
    try:
        inner = outer / "rootfs" / "tmp" / "inner"
        image_cli("bundle", config_ref, str(inner))
        assert not bundles.is_mountpoint(str(inner / "rootfs"))
        assert (inner / "rootfs" / "bin" / "busybox").is_file() and not (inner / "overlay").exists()
        image_cli("unbundle", str(inner))
        bad = image_cli("bundle", "--overlay", config_ref, str(outer / "rootfs" / "tmp" / "forced"), check=False)
        assert bad.returncode == 1 and "overlay mount" in bad.stderr and "--copy" in bad.stderr
        assert not (outer / "rootfs" / "tmp" / "forced").exists()
    finally:
        image_cli("unbundle", str(outer))
