"""A streaming tar reader for layers: ustar, PAX (per-entry and global) and GNU long names.

Written for speed over tarfile's stream mode (which copies every block through a small buffer):
headers are parsed with a handful of slices, and file data goes from the decompressor's buffers to
the destination fd without copies (Entry data is read through `stream.write_to` / `stream.skip`).
"""
from crate_image.errors import UnsafeLayer

BLOCK = 512
NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # link, symlink, devices, dir, fifo: no data blocks


class Entry:
    __slots__ = ("name", "linkname", "type", "mode", "uid", "gid", "mtime", "size", "devmajor", "devminor",
                 "xattrs", "remaining")

    def isreg(self):
        return self.type in (b"0", b"\0", b"7")

    def isdir(self):
        return self.type == b"5"

    def issym(self):
        return self.type == b"2"

    def islnk(self):
        return self.type == b"1"

    def ischr(self):
        return self.type == b"3"

    def isblk(self):
        return self.type == b"4"

    def isfifo(self):
        return self.type == b"6"


def _bad(what):
    return UnsafeLayer(f"layer is not a valid tar stream: {what}", "the image is malformed")


def _number(field):
    """An octal field (NUL/space terminated) or GNU base-256 (high bit set)."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _bad(f"number field {field!r}")


def _string(field):
    return field.split(b"\0", 1)[0]


def _decode(raw):
    return raw.decode("utf-8", "surrogateescape")


def _pax(data):
    """PAX records 'LEN key=value\\n' -> {key: bytes value}."""
    out = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _bad("a PAX record has no length")
        if length <= 0 or pos + length > len(data):
            raise _bad("a PAX record length is out of range")
        record = data[space + 1:pos + length - 1]  # without the trailing newline
        key, sep, value = record.partition(b"=")
        if sep:
            out[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return out


def _checksum_ok(header):
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 256  # the checksum field counts as spaces
    if stored == unsigned:
        return True
    signed = unsigned - sum(b for b in header[:148] if b > 127) * 2 - sum(b for b in header[156:] if b > 127) * 2
    return stored == signed


def entries(stream):
    """Yield Entry objects. The caller consumes an entry's data with stream.write_to/skip and
    lowers entry.remaining; whatever is left is skipped before the next header is read."""
    global_pax = {}
    pending = None  # the last entry, whose data and padding must be passed before the next header
    long_name = long_link = None
    pax = {}
    while True:
        if pending is not None:
            left = pending.remaining + (-pending.size % BLOCK)
            if left and stream.skip(left) != left:
                raise _bad(f"it ends inside {_decode(pending.name)!r}")
            pending = None
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # no end-of-archive blocks: accepted, as tar does
            raise _bad("it ends inside a header")
        if header == bytes(BLOCK):
            return
        if not _checksum_ok(header):
            raise _bad("a header checksum does not match")
        kind = header[156:157]
        size = _number(header[124:136])
        if size < 0:
            raise _bad("a negative size")
        if kind in (b"x", b"g", b"L", b"K"):
            data = stream.read(size)
            if len(data) != size:
                raise _bad("it ends inside an extended header")
            stream.skip(-size % BLOCK)
            if kind == b"x":
                pax.update(_pax(data))
            elif kind == b"g":
                global_pax.update(_pax(data))
            elif kind == b"L":
                long_name = _string(data)
            else:
                long_link = _string(data)
            continue
        if kind in (b"S", b"M"):
            raise UnsafeLayer("layer uses GNU sparse or multi-volume tar entries",
                              "rebuild the image with a standard tar writer")
        fields = dict(global_pax)
        fields.update(pax)
        pax = {}
        entry = Entry()
        name = _string(header[0:100])
        if header[257:263] == b"ustar\0":
            prefix = _string(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name, long_name = long_name, None
        linkname = _string(header[157:257])
        if long_link is not None:
            linkname, long_link = long_link, None
        if "path" in fields:
            name = fields["path"]
        if "linkpath" in fields:
            linkname = fields["linkpath"]
        entry.name = _decode(name)
        entry.linkname = _decode(linkname)
        entry.type = b"0" if kind == b"\0" else kind
        entry.mode = _number(header[100:108]) & 0o7777
        entry.uid = int(fields["uid"]) if "uid" in fields else _number(header[108:116])
        entry.gid = int(fields["gid"]) if "gid" in fields else _number(header[116:124])
        entry.mtime = float(fields["mtime"]) if "mtime" in fields else _number(header[136:148])
        if "size" in fields:
            size = int(fields["size"])
        if entry.type in NO_DATA:
            size = 0  # whatever the size field says, as tarfile and GNU tar read it
        entry.size = size
        entry.remaining = size
        entry.devmajor = _number(header[329:337])
        entry.devminor = _number(header[337:345])
        entry.xattrs = {k[len("SCHILY.xattr."):]: v for k, v in fields.items() if k.startswith("SCHILY.xattr.")}
        pending = entry
        yield entry
