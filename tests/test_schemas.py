"""The vendored OCI schemas load offline and report where a document fails."""
import json
import os

import pytest

import crate_schemas

SCHEMA_DIR = os.path.dirname(crate_schemas.__file__)


def runc_like_config():
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "crate",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
    }


def test_every_kind_loads_and_accepts_a_valid_document():
    digest = "sha256:" + "a" * 64
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 7}
    good = {
        "runtime-config": runc_like_config(),
        "runtime-state": {"ociVersion": "1.2.1", "id": "c1", "status": "running", "pid": 42,
                          "bundle": "/b", "annotations": {}},
        "runtime-features": {"ociVersionMin": "1.0.0", "ociVersionMax": "1.2.1"},
        "image-manifest": {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(desc, mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": [dict(desc, mediaType="application/vnd.oci.image.layer.v1.tar+gzip")]},
        "image-index": {"schemaVersion": 2, "manifests": [dict(desc, platform={"architecture": "amd64",
                                                                                "os": "linux"})]},
        "image-config": {"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest]}},
        "descriptor": desc,
        "image-layout": {"imageLayoutVersion": "1.0.0"},
    }
    assert set(good) == set(crate_schemas.SCHEMAS)
    for kind, doc in good.items():
        assert crate_schemas.first_error(doc, kind) is None, kind
        crate_schemas.validate(doc, kind)


def test_error_names_the_json_path():
    config = runc_like_config()
    config["process"]["args"] = "sh"  # must be an array
    with pytest.raises(crate_schemas.SchemaError) as err:
        crate_schemas.validate(config, "runtime-config")
    assert err.value.path == "$.process.args"
    assert "array" in str(err.value)

    config = runc_like_config()
    config["linux"]["namespaces"][1]["type"] = "bogus"
    error = crate_schemas.first_error(config, "runtime-config")
    assert error.path == "$.linux.namespaces[1].type"


def test_image_documents_are_checked_through_cross_file_refs():
    bad_digest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "not a digest", "size": 1}
    error = crate_schemas.first_error({"schemaVersion": 2, "manifests": [bad_digest]}, "image-index")
    assert error is not None and error.path == "$.manifests[0].digest"
    error = crate_schemas.first_error({"imageLayoutVersion": 1}, "image-layout")
    assert error.path == "$.imageLayoutVersion"


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown schema kind"):
        crate_schemas.validate({}, "nope")


def test_vendored_files_are_the_pinned_releases():
    readme = open(os.path.join(SCHEMA_DIR, "README.md")).read()
    assert "v1.2.1" in readme and "v1.1.1" in readme
    for rel in crate_schemas.SCHEMAS.values():
        with open(os.path.join(SCHEMA_DIR, rel)) as f:
            assert json.load(f)["$schema"].startswith("http://json-schema.org/draft-04/")
