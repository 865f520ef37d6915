"""Manifest media types and telling them apart (no network code: pull's bookkeeping needs this
without loading the HTTP stack)."""
import json

from crate_image.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


def media_type_of(body, content_type):
    ctype = (content_type or "").split(";")[0].strip()
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError("the registry sent a manifest that is not JSON", "check the registry or the image")
    if not isinstance(doc, dict):
        raise RegistryError("the registry sent a manifest that is not a JSON object", "check the image")
    if doc.get("schemaVersion") == 1 or ctype in DOCKER_SCHEMA1:
        raise RegistryError("the image uses Docker manifest schema 1, which is deprecated and not supported",
                            "push the image again with a current docker, podman or skopeo")
    mt = doc.get("mediaType") or ctype
    if mt not in INDEX_TYPES + MANIFEST_TYPES:
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else mt
    if mt not in INDEX_TYPES + MANIFEST_TYPES:
        raise RegistryError(f"unsupported manifest media type {mt or ctype!r}",
                            "crate-image reads OCI and Docker schema 2 manifests and indexes")
    return mt, doc
