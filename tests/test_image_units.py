"""crate-image pieces without a registry: references, platforms, credentials files, the registries
config, the tar reader and decompression."""
import base64
import gzip
import io
import json
import lzma
import os
import tarfile

import pytest

from crate_image import auth, compression, config, platform, reference, tar
from crate_image.errors import ImageError, InvalidReference, NotFound, UnsafeLayer

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,expected", [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("user/app", "docker.io/user/app:latest"),
    ("docker.io/alpine", "docker.io/library/alpine:latest"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000/a/b/c:v1.2-rc_3"),
    ("127.0.0.1:5000/library/busybox", "127.0.0.1:5000/library/busybox:latest"),
    ("ghcr.io/org/app@" + DIGEST, "ghcr.io/org/app@" + DIGEST),
    ("app:1@" + DIGEST, "docker.io/library/app:1@" + DIGEST),
    ("my.registry/a__b/c-d.e", "my.registry/a__b/c-d.e:latest"),
])
def test_reference_normalisation(text, expected):
    assert str(reference.parse(text)) == expected


def test_reference_parts_and_familiar_form():
    ref = reference.parse("busybox@" + DIGEST)
    assert (ref.domain, ref.path, ref.tag, ref.digest, ref.target) == ("docker.io", "library/busybox", None, DIGEST,
                                                                      DIGEST)
    assert reference.parse("busybox").familiar() == "busybox:latest"
    assert reference.parse("127.0.0.1:5000/x:y").familiar() == "127.0.0.1:5000/x:y"


@pytest.mark.parametrize("text", ["", "UPPER", "a b", "busybox:", ":tag", "busybox@sha256:abc", "a//b", "-a",
                                  "busybox:-x", "a" * 300, "busybox@md5:" + "a" * 32 + "x", "host:port/x"])
def test_invalid_references(text):
    with pytest.raises(InvalidReference) as e:
        reference.parse(text)
    assert str(e.value).startswith("invalid image reference") and "; use NAME[:TAG]" in str(e.value)


def test_platform_parse_and_select():
    assert platform.parse("linux/arm64/v8") == platform.Platform("linux", "arm64", "v8")
    assert platform.parse("arm64") == platform.Platform("linux", "arm64", None)
    with pytest.raises(ImageError):
        platform.parse("linux/")
    index = {"manifests": [
        {"digest": "a", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "c", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "d", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "att", "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
    ]}
    assert platform.select(index, platform.parse("linux/amd64"))["digest"] == "a"
    assert platform.select(index, platform.parse("linux/arm64"))["digest"] == "b"
    assert platform.select(index, platform.parse("linux/arm/v7"))["digest"] == "d"
    assert platform.select(index, platform.parse("linux/arm/v6"))["digest"] == "c"
    with pytest.raises(NotFound) as e:
        platform.select(index, platform.parse("linux/arm/v5"), "x")
    assert "available: linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8" in str(e.value)
    assert "unknown" not in str(e.value)


def test_credentials_lookup_order(tmp_path, monkeypatch):
    containers = tmp_path / "auth.json"
    docker = tmp_path / "docker" / "config.json"
    docker.parent.mkdir()
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(containers))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker.parent))
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    docker.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                                            "reg.example": {"auth": b64("docker:pw")}}}))
    containers.write_text(json.dumps({"auths": {"reg.example": {"auth": b64("podman:pw")}}}))
    assert auth.lookup("reg.example") == auth.Credentials("podman", "pw")
    assert auth.lookup("docker.io") == auth.Credentials("hub", "pw")
    assert not auth.lookup("other.example")
    containers.write_text("{not json")
    with pytest.raises(ImageError, match="cannot read credentials file"):
        auth.lookup("reg.example")
    containers.unlink()
    path = auth.store("new.example:5000", "u", "p:with:colons")
    assert path == str(docker)
    assert auth.lookup("new.example:5000") == auth.Credentials("u", "p:with:colons")
    assert auth.remove("new.example:5000") == [str(docker)]
    assert not auth.lookup("new.example:5000")


def test_registries_config(tmp_path):
    path = tmp_path / "registries.toml"
    path.write_text('[registries."docker.io"]\nmirrors = ["mirror.example", "https://m2.example/"]\n'
                    '[registries."reg.lan:5000"]\ninsecure = true\n')
    conf = config.load_registries(str(path))
    hub = conf.endpoints("docker.io")
    assert [(e.host, e.scheme, e.is_mirror) for e in hub] == [
        ("mirror.example", None, True), ("m2.example", "https", True), ("registry-1.docker.io", None, False)]
    assert hub[-1].registry == "docker.io"
    assert conf.insecure("reg.lan:5000") and conf.insecure("127.0.0.1:1234") and conf.insecure("localhost")
    assert not conf.insecure("ghcr.io")
    path.write_text("registries = 3")
    with pytest.raises(ImageError, match="tables expected"):
        config.load_registries(str(path))
    path.write_text("[registries")
    with pytest.raises(ImageError, match="cannot read registries config"):
        config.load_registries(str(path))
    assert config.load_registries(str(tmp_path / "absent.toml")).registries == {}


def _tar(fmt, entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entries(data, compressor=None):
    stream = compression.LayerStream(iter([compressor(data) if compressor else data]))
    out = []
    for e in tar.entries(stream):
        content = stream.read(e.size) if e.isreg() else None
        if e.isreg():
            e.remaining = 0
        out.append((e.name, e.type, e.linkname, e.uid, e.mtime, content, dict(e.xattrs)))
    stream.drain()
    return out, stream


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_formats(fmt):
    long_dir = "d" * 120
    infos = []
    f = tarfile.TarInfo(f"{long_dir}/file.txt" if fmt != tarfile.USTAR_FORMAT else "p" * 90 + "/" + "f" * 90)
    f.size, f.uid, f.mtime = 5, 1000, 1700000000
    infos.append((f, b"hello"))
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/" + "t" * (150 if fmt != tarfile.USTAR_FORMAT else 50)
    infos.append((link, None))
    if fmt == tarfile.PAX_FORMAT:
        x = tarfile.TarInfo("x")
        x.size, x.pax_headers = 1, {"SCHILY.xattr.user.k": "v\nwith newline"}
        infos.append((x, b"1"))
    big = tarfile.TarInfo("big-uid")
    big.uid = 3_000_000 if fmt == tarfile.GNU_FORMAT else 7
    infos.append((big, b""))
    got, stream = _entries(_tar(fmt, infos))
    assert got[0][0] == infos[0][0].name and got[0][5] == b"hello" and got[0][3] == 1000
    assert got[0][4] == 1700000000
    assert got[1][1] == b"2" and got[1][2] == infos[1][0].linkname
    if fmt == tarfile.PAX_FORMAT:
        assert got[2][6] == {"user.k": b"v\nwith newline"}
    assert got[-1][3] == infos[-1][0].uid
    assert stream.digests()[0] == stream.digests()[1]  # uncompressed: one and the same stream


@pytest.mark.parametrize("codec", ["gzip", "zstd", "xz", "plain", "gzip-multi"])
def test_decompression_by_magic(codec):
    info = tarfile.TarInfo("f")
    payload = os.urandom(300000) + b"a" * 300000
    info.size = len(payload)
    data = _tar(tarfile.PAX_FORMAT, [(info, payload)])
    if codec == "zstd":
        import zstandard
        comp = zstandard.ZstdCompressor().compress
    elif codec == "gzip-multi":  # pigz-style concatenated members
        comp = lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:])
    else:
        comp = {"gzip": gzip.compress, "xz": lzma.compress, "plain": None}[codec]
    got, stream = _entries(data, comp)
    assert got[0][5] == payload
    assert stream.digests()[1] == "sha256:" + __import__("hashlib").sha256(data).hexdigest()


def test_tar_reader_rejects_garbage_and_truncation():
    with pytest.raises(UnsafeLayer, match="not a valid tar stream"):
        _entries(b"x" * 1024)
    info = tarfile.TarInfo("f")
    info.size = 10000
    data = _tar(tarfile.PAX_FORMAT, [(info, b"z" * 10000)])
    with pytest.raises(ImageError):
        _entries(gzip.compress(data)[:-100])
    # a gzip bomb decompresses in bounded pieces
    bomb = gzip.compress(b"\0" * (64 << 20))
    stream = compression.LayerStream(iter([bomb]))
    assert len(stream.read(512)) == 512
    assert max(len(p) for p in stream.queue) <= compression.MAX_OUT
    stream.drain()
