"""The vendored OCI JSON schemas (see README.md) and a validator that names where a document fails.

Validation is kept off hot paths: jsonschema is imported only when a document is validated.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SCHEMAS = {
    "runtime-config": "runtime-spec/config-schema.json",
    "runtime-state": "runtime-spec/state-schema.json",
    "runtime-features": "runtime-spec/features-schema.json",
    "image-manifest": "image-spec/image-manifest-schema.json",
    "image-index": "image-spec/image-index-schema.json",
    "image-config": "image-spec/config-schema.json",
    "descriptor": "image-spec/content-descriptor.json",
    "image-layout": "image-spec/image-layout-schema.json",
}

_validators = {}


class SchemaError(ValueError):
    """A document does not match its schema; `path` is a JSON path such as $.process.args[0]."""

    def __init__(self, kind, path, message):
        super().__init__(f"{path}: {message}")
        self.kind, self.path, self.message = kind, path, message


def json_path(parts):
    """['process', 'args', 0] -> '$.process.args[0]'"""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _validator(kind):
    if kind in _validators:
        return _validators[kind]
    if kind not in SCHEMAS:
        raise KeyError(f"unknown schema kind {kind!r}; known: {', '.join(sorted(SCHEMAS))}")
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec_dir = os.path.join(HERE, os.path.dirname(SCHEMAS[kind]))

    def retrieve(uri):
        # every $ref in these schemas names a sibling file (directly or through an https "id"
        # base), so the file name alone finds it offline
        name = uri.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return Resource.from_contents(_load(os.path.join(spec_dir, name)), default_specification=DRAFT4)

    schema_path = os.path.join(HERE, SCHEMAS[kind])
    schema = _load(schema_path)
    base = "file://" + schema_path
    registry = Registry(retrieve=retrieve).with_resource(
        base, Resource.from_contents(schema, default_specification=DRAFT4))
    validator = jsonschema.Draft4Validator({"$ref": base}, registry=registry)
    _validators[kind] = validator
    return validator


def first_error(document, kind):
    """The most relevant SchemaError for `document`, or None when it is valid."""
    from jsonschema.exceptions import best_match
    error = best_match(_validator(kind).iter_errors(document))
    if error is None:
        return None
    return SchemaError(kind, json_path(error.absolute_path), error.message)


def validate(document, kind):
    """Raise SchemaError naming the JSON path of the first problem; return None when valid."""
    error = first_error(document, kind)
    if error is not None:
        raise error
