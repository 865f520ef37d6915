"""Layer extraction: the same tree as umoci on a layer set with whiteouts, opaque dirs, hardlinks and
symlinks (flattened, and as an overlay mount of per-layer dirs), and hostile layers that must not
touch anything outside the target."""
import gzip
import io
import json
import os
import subprocess
import tarfile

import pytest

import oci_images
from crate_image import layer as layers
from crate_image.errors import UnsafeLayer


def tar_of(*entries):
    """entries: (name, kind, extra) with kind file|dir|symlink|hardlink|char."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = oci_images.EPOCH
            data = None
            if kind == "file":
                payload = (extra or "pwned\n").encode()
                info.size, data = len(payload), io.BytesIO(payload)
                info.mode = 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "char":
                info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, 1, 3, 0o666
            tar.addfile(info, data)
    return buf.getvalue()


def extract(target, tar_bytes, mode="layer", real_root=None):
    os.makedirs(target, exist_ok=True)
    with layers.Extractor(str(target), mode=mode, real_root=real_root) as ex:
        stream = layers.LayerStream(iter([gzip.compress(tar_bytes)]))
        ex.extract(stream)
        stream.drain()
        ex.finish()
        return ex


def snapshot(path):
    return sorted(oci_images.list_tree(str(path))) if os.path.exists(path) else None


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    """Both ways of resolving paths inside the root: openat2(RESOLVE_IN_ROOT) and the by-hand walk
    used where openat2 is missing."""
    from crate_image import inroot
    monkeypatch.setattr(inroot, "_openat2_works", None if request.param == "openat2" else False)
    return request.param


@pytest.fixture
def outside(tmp_path):
    """A directory outside the extraction target that must stay exactly as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "existing.txt").write_text("untouched\n")
    return d


@pytest.mark.parametrize("mode", ["layer", "flat"])
@pytest.mark.parametrize("name", ["../escape.txt", "a/../../escape.txt", "./../../escape.txt"])
def test_dotdot_is_refused(tmp_path, resolver, outside, mode, name):
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeLayer, match="points outside the root"):
        extract(tmp_path / "target", tar_of(("a", "dir", None), (name, "file", None)), mode)
    assert not (tmp_path / "escape.txt").exists()
    assert [p for p in snapshot(tmp_path) if not p.startswith("target")] == \
        [p for p in before if not p.startswith("target")]


@pytest.mark.parametrize("mode", ["layer", "flat"])
def test_absolute_names_stay_inside(tmp_path, resolver, outside, mode):
    target = tmp_path / "target"
    before = snapshot(outside)
    extract(target, tar_of((f"{outside}/abs.txt", "file", None)), mode)
    assert snapshot(outside) == before
    assert (target / str(outside).lstrip("/") / "abs.txt").read_text() == "pwned\n"


@pytest.mark.parametrize("mode", ["layer", "flat"])
@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_symlink_then_file_through_it_stays_inside(tmp_path, resolver, outside, mode, link):
    target = tmp_path / "target"
    before = snapshot(outside)
    dest = str(outside) if link == "absolute" else "../" * 12 + str(outside).lstrip("/")
    extract(target, tar_of(("evil", "symlink", dest), ("evil/pwned.txt", "file", None),
                           ("evil/sub/deeper.txt", "file", None), ("evil", "dir", None)), mode)
    assert snapshot(outside) == before
    inside = target / str(outside).lstrip("/")
    assert (inside / "pwned.txt").read_text() == "pwned\n"
    assert (inside / "sub" / "deeper.txt").exists()


@pytest.mark.parametrize("mode", ["layer", "flat"])
@pytest.mark.parametrize("linkname", ["/etc/shadow", "../../../../../../etc/shadow", "etc/shadow"])
def test_hardlink_to_outside_is_refused(tmp_path, resolver, mode, linkname):
    shadow = os.stat("/etc/shadow") if os.path.exists("/etc/shadow") else os.stat("/etc/passwd")
    with pytest.raises(UnsafeLayer):
        extract(tmp_path / "target", tar_of(("shadow", "hardlink", linkname)), mode)
    after = os.stat("/etc/shadow") if os.path.exists("/etc/shadow") else os.stat("/etc/passwd")
    assert after.st_nlink == shadow.st_nlink
    for dirpath, _, files in os.walk(tmp_path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            assert (st.st_dev, st.st_ino) != (shadow.st_dev, shadow.st_ino)


def test_hardlink_through_a_symlinked_parent_stays_inside(tmp_path, resolver, outside):
    (outside / "secret").write_text("secret\n")
    target = tmp_path / "target"
    with pytest.raises(UnsafeLayer):
        extract(target, tar_of(("d", "symlink", str(outside)), ("copy", "hardlink", "d/secret")))
    assert os.stat(outside / "secret").st_nlink == 1


def test_device_nodes_skipped_when_not_root(tmp_path):
    ex = extract(tmp_path / "t", tar_of(("dev", "dir", None), ("dev/null", "char", None), ("ok", "file", None)),
                 real_root=False)
    assert ex.skipped_devices == ["dev/null"]
    assert not (tmp_path / "t" / "dev" / "null").exists()
    assert (tmp_path / "t" / "ok").exists()


def test_overlay_xattrs_in_a_layer_are_dropped(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.keep": "yes"}
        tar.addfile(info)
    extract(tmp_path / "t", buf.getvalue())
    names = os.listxattr(tmp_path / "t" / "d")
    assert "trusted.overlay.redirect" not in names and "user.keep" in names


def test_corrupt_and_truncated_streams(tmp_path):
    data = gzip.compress(tar_of(("f", "file", "x" * 100000)))
    with pytest.raises(Exception, match="truncated|decompress|ends"):
        extract_raw(tmp_path / "a", data[:len(data) // 2])
    stream = layers.LayerStream(iter([data]))
    os.makedirs(tmp_path / "b")
    with layers.Extractor(str(tmp_path / "b")) as ex:
        ex.extract(stream)
        stream.drain()
    with pytest.raises(Exception, match="hashes to"):
        layers.verify(stream, "sha256:" + "0" * 64, None, "layer x")


def extract_raw(target, blob):
    os.makedirs(target, exist_ok=True)
    with layers.Extractor(str(target)) as ex:
        stream = layers.LayerStream(iter([blob]))
        ex.extract(stream)
        stream.drain()


# ------------------------------------------------------------------ through the registry
@pytest.mark.registry
@pytest.mark.root
def test_unpacked_tree_is_identical_to_umoci(image_cli, edge_case_ref, tmp_path):
    image_cli("pull", edge_case_ref)
    # umoci reading crate's store
    umoci_bundle = tmp_path / "umoci"
    out = subprocess.run(["umoci", "unpack", "--image", f"{image_cli.root}/oci:{edge_case_ref}", str(umoci_bundle)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = oci_images.list_tree(str(umoci_bundle / "rootfs"))
    assert any(" c " in line for line in expected) and any("link=" in line for line in expected)
    # crate's flattened unpack
    flat = tmp_path / "flat"
    image_cli("unpack", edge_case_ref, str(flat))
    assert oci_images.list_tree(str(flat)) == expected
    # crate's overlay of per-layer directories (whiteouts as 0:0 devices, opaque xattrs)
    bundle = tmp_path / "bundle"
    image_cli("bundle", edge_case_ref, str(bundle))
    try:
        assert oci_images.list_tree(str(bundle / "rootfs")) == expected
    finally:
        image_cli("unbundle", str(bundle))
    assert not bundle.exists()
    info = json.loads(image_cli("inspect", edge_case_ref).stdout)
    remove_layer = os.path.join(image_cli.root, "layers", "sha256", info["DiffIds"][2][7:])
    assert os.getxattr(os.path.join(remove_layer, "data", "opaque"), "trusted.overlay.opaque") == b"y"
    st = os.lstat(os.path.join(remove_layer, "data", "gone"))
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)


@pytest.mark.registry
def test_hostile_layers_through_pull(image_cli, registry, image_layout, tmp_path, outside):
    before = snapshot(outside)
    cases = {
        "dotdot": tar_of(("../../../../escape.txt", "file", None)),
        "hardlink": tar_of(("shadow", "hardlink", "/etc/shadow")),
    }
    for tag, tar in cases.items():
        ref = registry.push(image_layout, oci_images.raw_layer_image(image_layout, [tar]), "hostile/image", tag)
        out = image_cli("pull", ref, check=False)
        assert out.returncode == 1, tag
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith("crate-image: ") and "nothing" in line, line
        assert os.listdir(os.path.join(image_cli.root, "layers", "sha256")) == []
        assert os.listdir(os.path.join(image_cli.root, "tmp")) == []
        refs = json.load(open(os.path.join(image_cli.root, "oci", "index.json")))["manifests"]
        assert refs == []
    # symlink + file through it: contained, so the pull succeeds and the file is inside the layer
    tar = tar_of(("evil", "symlink", str(outside)), ("evil/pwned.txt", "file", None))
    ref = registry.push(image_layout, oci_images.raw_layer_image(image_layout, [tar]), "hostile/image", "symlink")
    image_cli("pull", ref)
    assert snapshot(outside) == before
    flat = tmp_path / "flat"
    image_cli("unpack", ref, str(flat))
    assert (flat / str(outside).lstrip("/") / "pwned.txt").exists()
    assert snapshot(outside) == before
    assert not (tmp_path / "escape.txt").exists() and not os.path.exists("/escape.txt")
