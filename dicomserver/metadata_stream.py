"""WADO-RS `/metadata`, streamed: bounded memory whatever the study's size, gzip when accepted.

Each instance's DICOM JSON was serialised at STOW (dicomjson.py); an answer is those texts
in one JSON array, their BulkDataURIs made absolute for the request's base URL. Before the
status line only the series and the newest watermark and count of their instances are read
(one aggregate query: enough for a 404, the ETag and a 304). The body then reads the texts
METADATA_BATCH instances at a time, each batch a short statement of its own, so memory stays
bounded and no database connection is held while a slow client reads. The body goes out
chunked: its length is known only once every text has been read (an answer of one batch at
most is made before the status line and sent with its length).

gzip (when Accept-Encoding allows it, RFC 9110 §12.5.3): deflating 20 MB of JSON costs more
CPU than the rest of the request, so a series' text is deflated once per version and base
URL and kept in the index (SeriesMetadataCache); the first gzip read after a change builds
it while streaming (series of one batch or less, and single instances, are deflated afresh).
Raw deflate streams that end in a sync flush can be concatenated, so the cached series and
the brackets and commas between them make one gzip member, whose CRC-32 is combined from the
parts' (crc32_combine, as zlib and pigz do): nothing cached is inflated or deflated again.
A single member: a client that inflates with one zlib stream (as many do) stops after the first.

A body read while the study changes may show part of the change (an instance deleted
meanwhile is left out, one added is not in it). Its ETag, read before, names a state the
study never returns to (versions only move forward), so no client cache keeps it as current.
A cache entry is labelled with the version of the very rows it was built from.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .dicomjson import joined_absolute_uris
from .index import Index
from .index.reads import METADATA_BATCH, CachedDeflate, SeriesVersion, version_tag
from .partitions import DEFAULT, Partition

#: zlib's default level: a series is deflated once per version, then served from the cache.
GZIP_LEVEL = 6
#: The most compressed bytes held in memory to cache one series (far more than 100,000 CT
#: instances need); a larger series is deflated afresh for every gzip request.
CACHE_LIMIT = 16 << 20
#: gzip member header (RFC 1952): deflate, no flags, no modification time, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether to answer in gzip (RFC 9110 §12.5.3): the client gives gzip (or its alias
    x-gzip) a non-zero quality, by name or by `*` (a name listed wins over `*`), and does not
    prefer identity by a higher quality given it by name or by `*`. No header: no coding."""
    if not accept_encoding:
        return False
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0  # an unreadable weight is no consent
        coding = "gzip" if coding == "x-gzip" else coding
        qualities[coding] = max(quality, qualities.get(coding, quality))
    gzip = qualities.get("gzip", qualities.get("*", 0.0))
    identity = qualities.get("identity", qualities.get("*", 0.0))
    return gzip > 0 and gzip >= identity


@dataclass(frozen=True)
class MetadataStream:
    """One `/metadata` answer: its version, known before the status line, and its body,
    produced only when iterated (a 304 reads no DICOM JSON, nor does a HEAD of a large one)."""

    index: Index
    series: list[SeriesVersion]
    #: The instance asked for, at instance level (its series is then not cached).
    sop_uid: str | None
    base_url: str
    gzip: bool
    #: The original versions (`msdicom-request-original`): never cached, an ETag of their own.
    original: bool = False

    @property
    def etag(self) -> str:
        """The version of the instances answered and a checksum of the base URL the URIs use;
        `-orig` for the original versions, `-gz` for the gzip variant (a weak validator: its
        bytes depend on the zlib build)."""
        newest = max(s.newest for s in self.series)
        tag = f"{version_tag(newest, sum(s.count for s in self.series))}-{zlib.crc32(self.base_url.encode()):08x}"
        if self.original:
            tag += "-orig"
        return tag + "-gz" if self.gzip else tag

    @property
    def small(self) -> bool:
        """At most one batch of instances: cheap to make whole before the status line, and then
        sent with a Content-Length (an instance's metadata, a short series)."""
        return sum(s.count for s in self.series) <= METADATA_BATCH

    def chunks(self) -> Iterator[bytes]:
        return self._gzip() if self.gzip else self._identity()

    def _identity(self) -> Iterator[bytes]:
        yield b"["
        started = False
        for series in self.series:
            for piece in self._series_text(series)[1]:
                if started and piece.first:
                    yield b","
                yield piece.data
                started = True
        yield b"]"

    def _gzip(self) -> Iterator[bytes]:
        member = _Member()
        yield _GZIP_HEADER
        yield member.add(_OPEN)
        for series in self.series:
            yield from self._deflated_series(series, member)
        yield member.add(_CLOSE)
        yield member.trailer()

    def _deflated_series(self, series: SeriesVersion, member: _Member) -> Iterator[bytes]:
        """A series' text deflated: from the cache, else deflated now (and cached). A series of
        one batch or less deflates in about a millisecond: not worth a write to the index."""
        cacheable = self.sop_uid is None and series.count > METADATA_BATCH and not self.original
        if cacheable:
            cached = self.index.cached_metadata(series.id, self.base_url, series.version)
            if cached is not None:
                if member.length > 1:
                    yield member.add(_COMMA)
                yield member.add(cached)
                return
        version, pieces = self._series_text(series)
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        kept: list[bytes] | None = [] if cacheable else None
        kept_bytes = crc = length = 0
        for piece in pieces:
            if piece.first and member.length > 1:
                yield member.add(_COMMA)
            member.text(piece.data)
            crc, length = zlib.crc32(piece.data, crc), length + len(piece.data)
            data = compressor.compress(piece.data)
            if not data:
                continue
            if kept is not None:
                kept.append(data)
                kept_bytes += len(data)
                if kept_bytes > CACHE_LIMIT:
                    kept = None
            yield data
        if length == 0:
            return  # every instance went while it was read: nothing was sent, nothing to keep
        tail = compressor.flush(zlib.Z_SYNC_FLUSH)
        if kept is not None:
            kept.append(tail)
            entry = CachedDeflate(crc, length, b"".join(kept))
            del kept
            self.index.cache_metadata(series.id, self.base_url, version, entry)
        yield tail

    def _series_text(self, series: SeriesVersion) -> tuple[str, Iterator[_Piece]]:
        """The version of the series' rows as read now, and their text, a batch at a time."""
        ids, version = self.index.metadata_ids(series.id, self.sop_uid)
        return version, self._pieces(ids)

    def _pieces(self, ids: list[int]) -> Iterator[_Piece]:
        first = True
        for start in range(0, len(ids), METADATA_BATCH):
            texts = self.index.metadata_texts(ids[start : start + METADATA_BATCH], original=self.original)
            if not texts:
                continue
            yield _Piece(joined_absolute_uris(texts, self.base_url, leading_comma=not first), first)
            first = False


def metadata_stream(
    index: Index, uids: tuple[str, str | None, str | None], base_url: str, *, gzip: bool, original: bool = False,
    partition: Partition = DEFAULT,
) -> MetadataStream:
    """The answer to a `/metadata` request (of the original versions with `original`); NotFound
    if the study/series/instance is not stored in the partition. (What follows reads by series
    row id, which is the partition's.)"""
    return MetadataStream(index, index.metadata_series(*uids, partition=partition), uids[2], base_url, gzip, original)


@dataclass(frozen=True)
class _Piece:
    """Encoded text of consecutive instances of one series (`first`: the series' first piece,
    which needs a comma before it unless nothing came before)."""

    data: bytes
    first: bool


class _Member:
    """The running CRC-32 and length of the text a gzip member carries, for its trailer."""

    def __init__(self) -> None:
        self.crc = 0
        self.length = 0

    def add(self, part: CachedDeflate) -> bytes:
        """Account for a deflated part whose CRC-32 and length are known; its bytes to send."""
        self.crc = crc32_combine(self.crc, part.crc32, part.length)
        self.length += part.length
        return part.deflate

    def text(self, data: bytes) -> None:
        """Account for text deflated now."""
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)

    def trailer(self) -> bytes:
        return struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)


def _deflated(text: bytes, *, final: bool = False) -> CachedDeflate:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(text) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return CachedDeflate(zlib.crc32(text), len(text), data)


_OPEN, _COMMA, _CLOSE = _deflated(b"["), _deflated(b","), _deflated(b"]", final=True)

# -- CRC-32 of concatenated data from the parts' CRCs (zlib's crc32_combine) -------------

_POLY = 0xEDB88320  # CRC-32 (ISO 3309), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected representation)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()  # x^(2^n) modulo the polynomial


def _x8nmodp(length: int) -> int:
    """x^(8 * length) modulo the polynomial: the shift `length` bytes of data apply to a CRC."""
    p, k = 1 << 31, 3  # x^0; 2^3 bits per byte
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from A's CRC, B's CRC and B's length."""
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2
