"""JSON for the start-up path: the json package imports re (~4 ms here), so use its C core.

`_json` is CPython's accelerator behind json.loads/json.dumps; if its interface ever differs,
fall back to the json package (slower start-up, same results).
"""
try:
    import _json

    class _Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
        memo = {}

    def _default(obj):
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    _scan = _json.make_scanner(_Context())
    _encode = _json.make_encoder(None, _default, _json.encode_basestring, None, ":", ",", False, False, True)
except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Python builds
    _scan = None


def _whitespace_end(text, index):
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


def loads(text):
    """Parse a JSON document; ValueError (json.JSONDecodeError) on malformed input."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    if _scan is None:
        import json
        return json.loads(text)
    start = _whitespace_end(text, 0)
    try:
        value, end = _scan(text, start)
    except StopIteration:
        import json
        return json.loads(text)  # raises the usual JSONDecodeError with position
    if _whitespace_end(text, end) != len(text):
        import json
        return json.loads(text)  # "Extra data" error
    return value


def dumps(obj):
    """Compact JSON (separators ',' and ':'), non-ASCII kept as is."""
    if _scan is None:
        import json
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return "".join(_encode(obj, 0))


def dumps_indented(obj, indent="  ", level=0):
    """Like json.dumps(obj, indent=2): objects and arrays one item per line."""
    pad, inner = indent * level, indent * (level + 1)
    if isinstance(obj, dict) and obj:
        items = (f"{inner}{dumps(str(k))}: {dumps_indented(v, indent, level + 1)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, (list, tuple)) and obj:
        items = (f"{inner}{dumps_indented(v, indent, level + 1)}" for v in obj)
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return dumps(obj)


def load_file(path):
    with open(path, "rb") as f:
        return loads(f.read())
