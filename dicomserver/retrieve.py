"""WADO-RS planning: which bytes answer a retrieve, in which framing and transfer syntax.

Every index read happens here, before the response starts; the generators this
module returns touch only the blob store (and the transcoder), so no database
connection is held while bytes flow to a slow client.

An instance asked for in its stored transfer syntax (or with `transfer-syntax=*`)
is served as stored, by ranged reads. Any other syntax is transcoded (see
`transcode.py`) instance by instance, so a multi-instance study or series can be
transcoded too. Whatever is transcoded is converted before the status line goes out,
into one spool file per answer (memory, then disk): a failure in any instance or frame
is still a clean 406, never a 200 cut short, and every answer has a Content-Length.
Frames cut from the stored file are checked against its size first, for the same reason.

What is served as stored from a local disk store is described as `segments` (framing
bytes and ranges of stored files): gunicorn's worker sends the files by sendfile between
the framing (gunicorn_worker.py), any other server reads them as one file (`SegmentedFile`),
so a multipart answer costs about what a single-part one does.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import IO

from backends.base import BlobStore

from .archive import Archive
from .errors import BadRequest, NotAcceptable, NotFound
from .frames import frame_count, frame_ranges
from .index import StoredInstance
from .media import ANY_TRANSFER_SYNTAX, DICOM_JSON, Rendition, part_content_type, syntax_fits
from .metadata_stream import MetadataStream, gzip_accepted, metadata_stream
from .metrics import open_blob, timed_first_chunk
from .multipart import MultipartWriter
from .partitions import DEFAULT, Partition
from .segments import FileRange, Segment
from .settings import Settings
from .transcode import (
    TARGETS,
    can_transcode,
    transcode_frames,
    transcode_instance,
    why_not,
    write_transcoded,
)
from .transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_LITTLE_ENDIAN

CHUNK = 1 << 20
#: The reference server's request header for an instance's original version (bulk_update.py).
ORIGINAL_VERSION_HEADER = "msdicom-request-original"


@dataclass(frozen=True)
class Body:
    """A response body to stream: headers and a lazy iterator of chunks."""

    content_type: str
    #: None when unknown up front (transcoded parts): the response goes out chunked.
    length: int | None
    chunks: Iterable[bytes]
    #: Set for a single stored file on local disk: serve it with sendfile (`chunks` is empty).
    local_path: str | None = None
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    #: Set (and `chunks` empty) when the body is framing bytes and ranges of local files:
    #: what is served as stored from a local store, sent by sendfile (`SegmentedFile`).
    segments: tuple[Segment, ...] | None = None
    #: The blob key of `local_path` (the nginx X-Accel-Redirect mode names it).
    blob_key: str | None = None


def retrieve_instances(
    archive: Archive, uids: tuple[str, str | None, str | None], renditions: list[Rendition], *,
    original: bool = False, partition: Partition = DEFAULT,
) -> Body:
    """A study, series or instance (WADO-RS retrieve) in the first rendition that fits them all;
    with `original` (`msdicom-request-original`), in the version first stored where a bulk
    update has changed it since."""
    read = archive.index.original_instances if original else archive.index.instances
    instances = read(*uids, partition=partition)
    rendition = choose(renditions, instances, archive.settings)
    return instances_body(archive.store, instances, rendition, archive.settings)


def retrieve_frames(
    archive: Archive, uids: tuple[str, str | None, str | None], numbers: list[int], renditions: list[Rendition],
    *, partition: Partition = DEFAULT,
) -> Body:
    """Frames of one instance (WADO-RS frames)."""
    (instance,) = archive.index.instances(*uids, partition=partition)
    rendition = choose(renditions, [instance], archive.settings, frames=True)
    return frames_body(archive.store, instance, numbers, rendition, archive.settings)


@dataclass(frozen=True)
class Metadata:
    """The metadata of a study, series or instance: its validator, and its body made on demand.

    Unlike the other bodies of this module, a large one reads the index as it goes out, in
    short batches that hold no connection in between (metadata_stream.py)."""

    stream: MetadataStream

    @property
    def etag(self) -> str:
        return self.stream.etag

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """What a 200 and a 304 both carry: the validator, and that it depends on Accept-Encoding."""
        etag = f'W/"{self.etag}"' if self.stream.gzip else f'"{self.etag}"'
        return (("ETag", etag), ("Vary", "Accept-Encoding"))

    def body(self) -> Body:
        headers = self.headers + ((("Content-Encoding", "gzip"),) if self.stream.gzip else ())
        if self.stream.small:
            data = b"".join(self.stream.chunks())
            return Body(DICOM_JSON, len(data), (data,), headers=headers)
        return Body(DICOM_JSON, None, self.stream.chunks(), headers=headers)


def metadata(
    archive: Archive, uids: tuple[str, str | None, str | None], base_url: str, accept_encoding: str | None = None,
    *, original: bool = False, partition: Partition = DEFAULT,
) -> Metadata:
    """WADO-RS metadata; the ETag follows the stored versions, the base URL the URIs use and
    the content coding (gzip when Accept-Encoding allows it); `original` as for retrieve."""
    gzip = gzip_accepted(accept_encoding)
    return Metadata(metadata_stream(archive.index, uids, base_url, gzip=gzip, original=original, partition=partition))


class DamagedInstance(NotFound):
    """A frame lies beyond the end of the stored file (an instance stored before STOW
    checked Pixel Data against the file size): it is not in the archive."""


class _Refused(Exception):
    """This rendition cannot be produced for one instance; the message says why."""


@dataclass(frozen=True)
class _Plan:
    """How one instance (or its frames) is served: in which syntax, and whether converted."""

    syntax: str
    transcode: bool


def choose(
    renditions: list[Rendition], instances: list[StoredInstance], settings: Settings, *, frames: bool = False
) -> Rendition:
    """The first acceptable rendition every instance can be served in; else 406 saying why."""
    reasons: list[str] = []
    for rendition in renditions:
        try:
            for instance in instances:
                _plan(instance, rendition, settings, frames=frames)
        except _Refused as exc:
            if str(exc) not in reasons:
                reasons.append(str(exc))
            continue
        return rendition
    raise NotAcceptable(
        "; ".join(reasons) + "; request transfer-syntax=* to receive the stored encoding"
    )


def _plan(instance: StoredInstance, rendition: Rendition, settings: Settings, *, frames: bool) -> _Plan:
    """Decide how `instance` is served in `rendition`, or raise _Refused."""
    stored = instance.transfer_syntax_uid
    wanted = rendition.transfer_syntax
    media_type = rendition.media_type
    has_pixels = instance.rows is not None
    # Frames are cut from the stored file by recorded offsets; without them
    # (deflated, unaligned bit-packed) a frame has to be decoded even "as stored".
    cut_as_stored = not frames or instance.frames is not None or not has_pixels
    if wanted == ANY_TRANSFER_SYNTAX:
        served = stored if cut_as_stored else EXPLICIT_VR_LITTLE_ENDIAN
        if served in rendition.refused_syntaxes:
            raise _Refused(
                f"instance {instance.sop_instance_uid} would be sent as {served}, which the Accept header refuses"
            )
        if cut_as_stored:
            if not syntax_fits(media_type, stored):
                raise _Refused(
                    f"instance {instance.sop_instance_uid} is stored as {stored}, "
                    f"which cannot be sent as {media_type}"
                )
            return _Plan(stored, False)
        wanted = EXPLICIT_VR_LITTLE_ENDIAN
        if not syntax_fits(media_type, wanted):
            raise _Refused(
                f"the frames of instance {instance.sop_instance_uid} (stored as {stored}) "
                f"can only be decoded to {wanted}, which cannot be sent as {media_type}"
            )
    if wanted == stored and cut_as_stored:
        return _Plan(stored, False)
    same_native_bytes = cut_as_stored and stored in NATIVE_LITTLE_ENDIAN and wanted in NATIVE_LITTLE_ENDIAN
    if frames and (not has_pixels or same_native_bytes):
        # No pixel data is a 404 later; native little endian frames are the same bytes.
        return _Plan(wanted, False)
    if not has_pixels:
        # Only the header is re-encoded: any syntax this server writes will do.
        if wanted not in TARGETS:
            raise _Refused(f"cannot transcode instance {instance.sop_instance_uid}: {why_not(stored, wanted)}")
        return _Plan(wanted, True)
    if wanted not in TARGETS or not can_transcode(stored, wanted):
        raise _Refused(
            f"instance {instance.sop_instance_uid} is stored as {stored} and cannot be "
            f"transcoded to {wanted}: {why_not(stored, wanted)}"
        )
    if instance.bits_allocated == 1 and wanted not in NATIVE_LITTLE_ENDIAN:
        raise _Refused(
            f"instance {instance.sop_instance_uid} has bit-packed pixel data (Bits Allocated 1), "
            f"which can only be served natively, not as {wanted}"
        )
    _check_size(instance, settings.max_transcode_bytes, frames=frames)
    return _Plan(wanted, True)


def _check_size(instance: StoredInstance, limit: int, *, frames: bool) -> None:
    """Transcoding holds decoded pixels in memory: refuse what would not fit the limit.

    Frames are decoded one at a time, so for them the frame counts (and the whole
    file when it is deflated, since that cannot be read in place); whole instances
    count their stored size and their decoded pixel data.
    """
    frame = _decoded_frame_bytes(instance)
    count = max(instance.number_of_frames or 1, 1)
    if frames:
        size = max(frame, instance.size if instance.frames is None else 0)
    else:
        size = max(instance.size, frame * count)
    if size > limit:
        raise _Refused(
            f"instance {instance.sop_instance_uid} is too large to transcode ({size} bytes; "
            f"the limit is {limit}); use transfer-syntax=*"
        )


def _decoded_frame_bytes(instance: StoredInstance) -> int:
    samples = 1
    try:
        value = json.loads(instance.metadata).get("00280002", {}).get("Value")
        samples = int(value[0]) if value else 1
    except (ValueError, TypeError, AttributeError):
        pass
    bits = instance.bits_allocated or 8
    return (instance.rows or 0) * (instance.columns or 0) * samples * math.ceil(bits / 8)


# -- whole instances --------------------------------------------------------------


def instances_body(store: BlobStore, instances: list[StoredInstance], rendition: Rendition, settings: Settings) -> Body:
    """Whole instances, as one single-part body or multipart/related."""
    plans = [_plan(i, rendition, settings, frames=False) for i in instances]
    if not rendition.multipart:
        ((instance,), (plan,)) = (instances, plans)
        content_type = part_content_type(rendition.media_type, plan.syntax)
        if plan.transcode:
            spool = _transcode(store, instance, plan.syntax, settings)
            return Body(content_type, _spool_size(spool), _SpoolChunks(spool))
        local_path = store.local_path(instance.blob_key)
        return Body(
            content_type=content_type,
            length=instance.size,
            chunks=() if local_path else _blob_chunks(store, instance.blob_key, 0, instance.size),
            local_path=local_path,
            blob_key=instance.blob_key if local_path else None,
        )
    if not any(plan.transcode for plan in plans) and (paths := _local_paths(store, instances)) is not None:
        return segments_body(
            MultipartWriter(),
            rendition.media_type,
            [
                ({"Content-Type": part_content_type(rendition.media_type, plan.syntax)}, [FileRange(path, 0, i.size)])
                for i, plan, path in zip(instances, plans, paths, strict=True)
            ],
        )
    parts: list[Part] = []
    transcoded = _Spool(settings) if any(plan.transcode for plan in plans) else None
    try:
        for instance, plan in zip(instances, plans, strict=True):
            headers = {"Content-Type": part_content_type(rendition.media_type, plan.syntax)}
            if transcoded is not None and plan.transcode:
                with open_blob(store, instance.blob_key) as fp:
                    start, length = transcoded.append(partial(write_transcoded, fp, plan.syntax))
                parts.append(Part(headers, length, partial(transcoded.chunks, start, length)))
            else:
                stored = _stored_chunks_of(store, instance.blob_key, 0, instance.size)
                parts.append(Part(headers, instance.size, stored))
        return multipart_body(MultipartWriter(), rendition.media_type, parts, transcoded)
    except BaseException:
        if transcoded is not None:
            transcoded.close()
        raise


def _transcode(store: BlobStore, instance: StoredInstance, target: str, settings: Settings) -> IO[bytes]:
    with open_blob(store, instance.blob_key) as fp:
        return transcode_instance(
            fp, target, spool_memory_bytes=settings.spool_memory_bytes, spool_dir=settings.spool_dir
        )


def _spool_size(spool: IO[bytes]) -> int:
    spool.seek(0, 2)
    size = spool.tell()
    spool.seek(0)
    return size


class _Spool:
    """The transcoded instances or frames of one answer, written one after the other into
    one spool file before the status line goes out, and read back part by part."""

    def __init__(self, settings: Settings) -> None:
        memory, folder = settings.spool_memory_bytes, settings.spool_dir
        self.file = tempfile.SpooledTemporaryFile(max_size=memory, dir=folder)  # noqa: SIM115 - closed with the answer

    def append(self, write: Callable[[IO[bytes]], object]) -> tuple[int, int]:
        """Let `write` add data at the end; return where it starts and its length."""
        start = self.file.seek(0, 2)
        write(self.file)
        return start, self.file.seek(0, 2) - start

    def chunks(self, start: int, length: int) -> Iterator[bytes]:
        while length > 0:
            self.file.seek(start)
            chunk = self.file.read(min(CHUNK, length))
            if not chunk:
                raise OSError("the spool file is shorter than what was written to it")
            start += len(chunk)
            length -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.file.close()


class _SpoolChunks:
    """Iterate a spool file in chunks and close it at the end, or when the server
    closes the response early (werkzeug calls close() on the body iterable)."""

    def __init__(self, spool: IO[bytes]) -> None:
        self._spool = spool

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._spool.read(CHUNK):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> _SpoolChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- frames -----------------------------------------------------------------------


def frames_body(
    store: BlobStore, instance: StoredInstance, numbers: list[int], rendition: Rendition, settings: Settings
) -> Body:
    """Frames of one instance: ranged reads at the offsets recorded at STOW, or decoded."""
    if instance.rows is None:
        raise NotFound(f"instance {instance.sop_instance_uid} has no pixel data")
    count = frame_count(instance.frames) if instance.frames is not None else max(instance.number_of_frames or 1, 1)
    missing = [n for n in numbers if n > count]
    if missing:
        raise NotFound(
            f"frame {missing[0]} does not exist: instance {instance.sop_instance_uid} has {count} frame(s)"
        )
    if not rendition.multipart and len(numbers) != 1:
        raise BadRequest("several frames need a multipart/related Accept header")
    plan = _plan(instance, rendition, settings, frames=True)
    content_type = part_content_type(rendition.media_type, plan.syntax)

    if plan.transcode:
        # Every frame is converted before the status line, so a codec failure is still a clean 406.
        if not rendition.multipart:
            with closing(_transcoded_frames(store, instance, numbers, plan.syntax)) as frames:
                data = b"".join(frames)
            return Body(content_type, len(data), [data])
        writer = MultipartWriter()
        spool = _Spool(settings)
        try:
            with closing(_transcoded_frames(store, instance, numbers, plan.syntax)) as frames:
                for data in frames:
                    spool.file.write(writer.part_head({"Content-Type": content_type}))
                    spool.file.write(data)
            spool.file.write(writer.close())
        except BaseException:
            spool.close()
            raise
        return Body(writer.content_type(rendition.media_type), _spool_size(spool.file), _SpoolChunks(spool.file))

    assert instance.frames is not None  # _plan transcodes frames that have no recorded offsets
    ranges = [frame_ranges(instance.frames, n) for n in numbers]
    for number, frame in zip(numbers, ranges, strict=True):
        if any(start + length > instance.size for start, length in frame):
            raise DamagedInstance(
                f"frame {number} of instance {instance.sop_instance_uid} is not in the stored file, "
                "which ends before it: the instance was stored with incomplete pixel data"
            )
    local_path = store.local_path(instance.blob_key)
    if local_path is not None:
        files = [[FileRange(local_path, start, n) for start, n in frame] for frame in ranges]
        if not rendition.multipart:
            return _segments(content_type, files[0])
        framed = [({"Content-Type": content_type}, frame) for frame in files]
        return segments_body(MultipartWriter(), rendition.media_type, framed)
    if not rendition.multipart:
        return Body(content_type, sum(n for _, n in ranges[0]), ranges_chunks(store, instance.blob_key, ranges[0]))
    parts = [
        Part(
            {"Content-Type": content_type},
            sum(n for _, n in frame),
            partial(ranges_chunks, store, instance.blob_key, frame),
        )
        for frame in ranges
    ]
    return multipart_body(MultipartWriter(), rendition.media_type, parts)


def _transcoded_frames(
    store: BlobStore, instance: StoredInstance, numbers: list[int], target: str
) -> Generator[bytes, None, None]:
    with open_blob(store, instance.blob_key) as fp:
        yield from transcode_frames(fp, numbers, target)


# -- framing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: headers, length (None if unknown), its chunks."""

    headers: dict[str, str]
    length: int | None
    chunks: Callable[[], Iterable[bytes]]  # called when the part's turn comes


def multipart_body(writer: MultipartWriter, media_type: str, parts: list[Part], spool: _Spool | None = None) -> Body:
    """Parts framed as multipart/related; `spool` (the transcoded parts) is closed with the body."""
    lengths = [p.length for p in parts if p.length is not None]
    length = None
    if len(lengths) == len(parts):
        length = writer.framing_size([p.headers for p in parts]) + sum(lengths)

    # The first stored blob is opened now, before the status line goes out: a blob
    # missing from the store is still an error status, not a body cut short.
    first = parts[0].chunks() if parts else ()

    def generate() -> Iterator[bytes]:
        for number, part in enumerate(parts):
            yield writer.part_head(part.headers)
            yield from first if number == 0 else part.chunks()
        yield writer.close()

    if spool is None:
        return Body(writer.content_type(media_type), length, generate())
    return Body(writer.content_type(media_type), length, _Closing(generate(), spool.close))


def _local_paths(store: BlobStore, instances: list[StoredInstance]) -> list[str] | None:
    """Where each instance's blob is on local disk (checked to exist now, before the status
    line goes out); None when the store is not local."""
    paths = []
    for instance in instances:
        path = store.local_path(instance.blob_key)
        if path is None:
            return None
        paths.append(path)
    return paths


def segments_body(
    writer: MultipartWriter, media_type: str, parts: list[tuple[dict[str, str], list[FileRange]]]
) -> Body:
    """Parts made of ranges of local files, framed as multipart/related (the same bytes as
    `multipart_body`)."""
    segments: list[Segment] = []
    for headers, ranges in parts:
        segments.append(writer.part_head(headers))
        segments.extend(ranges)
    segments.append(writer.close())
    return _segments(writer.content_type(media_type), segments)


def _segments(content_type: str, segments: Sequence[Segment]) -> Body:
    length = sum(len(s) if isinstance(s, bytes) else s.length for s in segments)
    return Body(content_type, length, (), segments=tuple(segments))


class _Closing:
    """Chunks that run `close` when they end, or when the server closes the answer early."""

    def __init__(self, chunks: Iterator[bytes], close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self._close()


def _stored_chunks_of(store: BlobStore, key: str, start: int, length: int) -> Callable[[], Iterator[bytes]]:
    return lambda: _blob_chunks(store, key, start, length)


def ranges_chunks(store: BlobStore, key: str, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
    for start, n in ranges:
        yield from _blob_chunks(store, key, start, n)


def _blob_chunks(store: BlobStore, key: str, start: int, length: int) -> Iterator[bytes]:
    return timed_first_chunk(store.iter_bytes(key, start=start, end=start + length, chunk_size=CHUNK))
