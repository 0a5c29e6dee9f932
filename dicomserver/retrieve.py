"""WADO-RS planning: which bytes answer a retrieve, in which framing and transfer syntax.

Every index read happens here, before the response starts; the generators this
module returns touch only the blob store, so no database connection is held while
bytes flow to a slow client. Stored bytes are served as they are: until
transcoding exists, a transfer syntax other than the stored one is a 406.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from backends.base import BlobStore

from .errors import BadRequest, NotAcceptable, NotFound
from .frames import frame_count, frame_ranges
from .index.models import Instance
from .media import ANY_TRANSFER_SYNTAX, NATIVE_LITTLE_ENDIAN, Rendition, part_content_type
from .multipart import MultipartWriter

CHUNK = 1 << 20


@dataclass(frozen=True)
class Body:
    """A response body to stream: headers and a lazy iterator of chunks."""

    content_type: str
    length: int
    chunks: Iterable[bytes]
    #: Set for a single stored file on local disk: serve it with sendfile.
    local_path: str | None = None


def _stored_syntax_ok(stored: str, wanted: str) -> bool:
    return wanted == ANY_TRANSFER_SYNTAX or wanted == stored


def choose(renditions: list[Rendition], stored_syntaxes: set[str], *, frames: bool = False) -> Rendition:
    """The first acceptable rendition every instance can be served in; else 406."""
    for rendition in renditions:
        if all(_can_serve(ts, rendition.transfer_syntax, frames) for ts in stored_syntaxes):
            return rendition
    wanted = ", ".join(sorted({r.transfer_syntax for r in renditions}))
    stored = ", ".join(sorted(stored_syntaxes))
    raise NotAcceptable(
        f"the requested transfer syntax ({wanted}) cannot be served: the data is stored as "
        f"{stored} and this server does not transcode yet; request transfer-syntax=* "
        "to receive the stored encoding"
    )


def _can_serve(stored: str, wanted: str, frames: bool) -> bool:
    if _stored_syntax_ok(stored, wanted):
        return True
    # Pixel bytes of implicit and explicit VR little endian are identical.
    return frames and stored in NATIVE_LITTLE_ENDIAN and wanted in NATIVE_LITTLE_ENDIAN


def served_syntax(stored: str, rendition: Rendition) -> str:
    return stored if rendition.transfer_syntax == ANY_TRANSFER_SYNTAX else rendition.transfer_syntax


def instances_body(store: BlobStore, instances: list[Instance], rendition: Rendition) -> Body:
    """Whole instances, as one single-part body or multipart/related."""
    if not rendition.multipart:
        (instance,) = instances
        return Body(
            content_type=part_content_type(rendition.media_type, served_syntax(instance.transfer_syntax_uid, rendition)),
            length=instance.size,
            chunks=_blob_chunks(store, instance.blob_key, 0, instance.size),
            local_path=store.local_path(instance.blob_key),
        )
    parts = [
        (
            {"Content-Type": part_content_type(rendition.media_type, served_syntax(i.transfer_syntax_uid, rendition))},
            [(i.blob_key, 0, i.size)],
        )
        for i in instances
    ]
    return _multipart(store, MultipartWriter(), rendition.media_type, parts)


def frames_body(store: BlobStore, instance: Instance, numbers: list[int], rendition: Rendition) -> Body:
    """Frames of one instance, by ranged reads at the offsets recorded at STOW."""
    if instance.frames is None:
        if instance.rows is None:
            raise NotFound(f"instance {instance.sop_instance_uid} has no pixel data")
        raise NotAcceptable(
            f"the frames of instance {instance.sop_instance_uid} (stored as "
            f"{instance.transfer_syntax_uid}) cannot be extracted without transcoding, "
            "which this server does not support yet"
        )
    count = frame_count(instance.frames)
    missing = [n for n in numbers if n > count]
    if missing:
        raise NotFound(
            f"frame {missing[0]} does not exist: instance {instance.sop_instance_uid} has {count} frame(s)"
        )
    content_type = part_content_type(rendition.media_type, served_syntax(instance.transfer_syntax_uid, rendition))
    ranges = [frame_ranges(instance.frames, n) for n in numbers]
    if not rendition.multipart:
        if len(numbers) != 1:
            raise BadRequest("several frames need a multipart/related Accept header")
        return Body(content_type, sum(n for _, n in ranges[0]), _ranges_chunks(store, instance.blob_key, ranges[0]))
    return _multipart(
        store,
        MultipartWriter(),
        rendition.media_type,
        [({"Content-Type": content_type}, [(instance.blob_key, s, n) for s, n in r]) for r in ranges],
    )


def _multipart(store: BlobStore, writer: MultipartWriter, media_type: str, parts) -> Body:
    """parts: [(headers, [(blob_key, start, length), ...]), ...]."""
    length = writer.framing_size([h for h, _ in parts]) + sum(n for _, rs in parts for _, _, n in rs)

    def generate() -> Iterator[bytes]:
        for headers, ranges in parts:
            yield writer.part_head(headers)
            for key, start, n in ranges:
                yield from _blob_chunks(store, key, start, n)
        yield writer.close()

    return Body(writer.content_type(media_type), length, generate())


def _ranges_chunks(store: BlobStore, key: str, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
    for start, n in ranges:
        yield from _blob_chunks(store, key, start, n)


def _blob_chunks(store: BlobStore, key: str, start: int, length: int) -> Iterator[bytes]:
    return store.iter_bytes(key, start=start, end=start + length, chunk_size=CHUNK)
