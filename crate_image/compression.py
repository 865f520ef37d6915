"""A layer blob as a stream of tar bytes: decompression by magic (gzip, zstd, xz, bzip2 or none),
both digests computed on the way, and zero-copy writes of file data.

Compressed chunks are hashed (the blob digest) and handed to `on_compressed` (the blob file) as they
arrive; decompressed output is hashed (the diff_id) and queued in pieces of at most 4 MiB, so a
decompression bomb cannot exhaust memory. gzip uses ISA-L (the isal package) when installed, which
decompresses about twice as fast as zlib; zlib otherwise.
"""
import bz2
import collections
import hashlib
import lzma
import os
import zlib

from crate_image.errors import ImageError

try:
    from isal import isal_zlib as _gzip_impl
except ImportError:  # optional: zlib is always there
    _gzip_impl = zlib

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
MAX_OUT = 4 << 20
READ_SIZE = 1 << 20


def detect(head):
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    return "tar"


class _Source:
    """The compressed side: chunks from an iterator, each hashed and passed on exactly once."""

    def __init__(self, chunks, on_compressed, progress):
        self.chunks = iter(chunks)
        self.on_compressed = on_compressed
        self.progress = progress
        self.hash = hashlib.sha256()
        self.size = 0
        self.pending = b""  # read but not yet handed out (peek, or a partial read)

    def _fetch(self):
        for chunk in self.chunks:
            if chunk:
                self.hash.update(chunk)
                self.size += len(chunk)
                if self.on_compressed:
                    self.on_compressed(chunk)
                if self.progress:
                    self.progress(len(chunk))
                return chunk
        return b""

    def next_chunk(self):
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self._fetch()

    def peek(self, n):
        while len(self.pending) < n:
            more = self._fetch()
            if not more:
                break
            self.pending += more
        return self.pending[:n]

    def read(self, n=-1):
        """File-like read for decoders that pull (zstandard's stream_reader)."""
        data = self.next_chunk()
        if n is not None and 0 <= n < len(data):
            data, self.pending = data[:n], data[n:]
        return data


class _Plain:
    def __init__(self, src):
        self.src = src

    def step(self):
        return self.src.next_chunk()


class _Gzip:
    """gzip members one after the other (pigz and friends write several); trailing zeros ignored."""

    def __init__(self, src):
        self.src = src
        self.obj = _gzip_impl.decompressobj(31)
        self.tail = b""
        self.done = False  # the current member ended: only another member or padding may follow

    def step(self):
        while True:
            data = self.tail or self.src.next_chunk()
            self.tail = b""
            if not data:
                if not self.done:
                    raise ImageError("a gzip layer ends before its end marker", "the blob is truncated")
                return b""
            if self.done:
                if not data.startswith(GZIP_MAGIC):
                    continue  # padding after the last member: hashed, not decompressed (as gzip -d)
                self.obj = _gzip_impl.decompressobj(31)
                self.done = False
            try:
                out = self.obj.decompress(data, MAX_OUT)
            except Exception as e:  # zlib.error or isal's IsalError
                raise ImageError(f"layer data does not decompress (gzip): {e}", "the blob is corrupt")
            self.tail = self.obj.unconsumed_tail
            if self.obj.eof:
                self.tail = self.obj.unused_data + self.tail
                self.done = True
            if out:
                return out


class _Stepwise:
    """xz and bzip2 through their decompressor objects' max_length."""

    def __init__(self, src, factory, kind):
        self.src, self.factory, self.kind = src, factory, kind
        self.obj = factory()

    def step(self):
        while True:
            if self.obj.eof:
                rest = self.obj.unused_data
                if not rest:
                    rest = self.src.next_chunk()
                    if not rest:
                        return b""
                self.obj = self.factory()
                data = rest
            elif self.obj.needs_input:
                data = self.src.next_chunk()
                if not data:
                    raise ImageError(f"a {self.kind} layer ends early", "the blob is truncated")
            else:
                data = b""
            try:
                out = self.obj.decompress(data, MAX_OUT)
            except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
                raise ImageError(f"layer data does not decompress ({self.kind}): {e}", "the blob is corrupt")
            if out:
                return out


class _Zstd:
    def __init__(self, src):
        try:
            import zstandard
        except ImportError:
            raise ImageError("a zstd layer needs the zstandard package", "pip install zstandard")
        self.error = zstandard.ZstdError
        self.reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=READ_SIZE, read_across_frames=True)

    def step(self):
        try:
            return self.reader.read(MAX_OUT)
        except self.error as e:
            raise ImageError(f"layer data does not decompress (zstd): {e}", "the blob is corrupt")


class LayerStream:
    """The uncompressed tar of a layer, over an iterator of compressed chunks.

    read(n) for headers; write_to(fd, n) and skip(n) for file data without copies; drain() reads
    to the end so digests() covers the whole blob."""

    def __init__(self, chunks, on_compressed=None, progress=None):
        self.src = _Source(chunks, on_compressed, progress)
        self.decoder = None
        self.kind = None
        self.diff = hashlib.sha256()
        self.uncompressed = 0
        self.queue = collections.deque()
        self.offset = 0       # into queue[0]
        self.available = 0
        self.ended = False

    def _more(self):
        """Decode one more piece into the queue; False at the end of the stream."""
        if self.ended:
            return False
        if self.decoder is None:
            self.kind = detect(self.src.peek(6))
            self.decoder = {"gzip": _Gzip, "zstd": _Zstd, "tar": _Plain}.get(self.kind)
            if self.decoder is None:
                factory = lzma.LZMADecompressor if self.kind == "xz" else bz2.BZ2Decompressor
                self.decoder = _Stepwise(self.src, factory, self.kind)
            else:
                self.decoder = self.decoder(self.src)
        piece = self.decoder.step()
        if not piece:
            self.ended = True
            return False
        self.diff.update(piece)
        self.uncompressed += len(piece)
        self.queue.append(piece)
        self.available += len(piece)
        return True

    def read(self, n):
        """Exactly n bytes, or fewer at the end of the stream."""
        while self.available < n and self._more():
            pass
        parts = []
        want = min(n, self.available)
        while want:
            head = self.queue[0]
            take = min(want, len(head) - self.offset)
            parts.append(head[self.offset:self.offset + take])
            self._consume(take)
            want -= take
        return b"".join(parts)

    def _consume(self, n):
        self.offset += n
        self.available -= n
        if self.offset == len(self.queue[0]):
            self.queue.popleft()
            self.offset = 0

    def write_to(self, fd, n):
        """Write the next n bytes to fd straight from the decoder's buffers; returns bytes written
        (fewer than n only when the stream ends)."""
        done = 0
        while done < n:
            if not self.available and not self._more():
                break
            head = self.queue[0]
            take = min(n - done, len(head) - self.offset)
            view = memoryview(head)[self.offset:self.offset + take]
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self._consume(take)
            done += take
        return done

    def skip(self, n):
        done = 0
        while done < n:
            if not self.available and not self._more():
                break
            take = min(n - done, len(self.queue[0]) - self.offset)
            self._consume(take)
            done += take
        return done

    def drain(self):
        while self._more():
            pass
        self.queue.clear()
        self.available = self.offset = 0
        while self.src.next_chunk():  # bytes after the end of the compressed data are hashed too
            pass

    def digests(self):
        return "sha256:" + self.src.hash.hexdigest(), "sha256:" + self.diff.hexdigest()


def file_chunks(path, size=READ_SIZE):
    with open(path, "rb") as f:
        while True:
            data = f.read(size)
            if not data:
                return
            yield data
