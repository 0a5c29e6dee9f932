"""A body of framing bytes and ranges of local files (multipart answers, frames), sent by
sendfile between the bytes.

Its own module with no imports from the rest of the package: gunicorn's master loads the
worker (gunicorn_worker.py), which needs this class, before `on_starting` has chosen the
Prometheus multiprocess directory; importing the app's modules there would set the
metrics up for one process and lose every worker's counts.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

#: The most bytes of a file read at once when the segments are read, not sent by sendfile.
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRange:
    """`length` bytes of the local file at `path`, from `offset`."""

    path: str
    offset: int
    length: int


Segment = bytes | FileRange


class SegmentedFile:
    """A body of framing bytes and ranges of local files, read as one file.

    gunicorn's worker (gunicorn_worker.py) claims it in its wsgi.file_wrapper and sends
    the files by sendfile between the bytes; any other server reads it. At most two files
    are open at a time (a study of thousands of instances holds two descriptors): the
    first, opened by `open_first` before the status line (a blob deleted since the index
    was read is still a 404, not an answer cut short) and kept until the body is closed,
    because gunicorn holds its fileno across the send and seeks it afterwards (a closed
    descriptor, or worse one reused by another thread, would be seeked); and the one
    being sent.
    """

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        self.segments = segments
        self.length = sum(len(s) if isinstance(s, bytes) else s.length for s in segments)
        #: Set by the server that sends the segments itself; until then fileno() refuses,
        #: so a server that would sendfile() the fileno as one whole file reads instead.
        self.sent_by_server = False
        self._path: str | None = None
        self._file: IO[bytes] | None = None
        self._first_path: str | None = None
        self._first: IO[bytes] | None = None
        self._pieces = self._read_pieces()

    def open_first(self) -> None:
        first = next((s for s in self.segments if isinstance(s, FileRange)), None)
        if first is not None and self._first is None:
            self._first = open(first.path, "rb")  # noqa: SIM115 - closed with the body
            self._first_path = first.path

    def open(self, path: str) -> IO[bytes]:
        """The file at `path`, open; the one open before is closed, unless it is the same
        (the frames of one instance follow each other) or the first."""
        if path == self._first_path and self._first is not None:
            return self._first
        if self._file is None or self._path != path:
            self._close_current()
            self._file = open(path, "rb")  # noqa: SIM115 - closed with the body or by the next open
            self._path = path
        return self._file

    def fileno(self) -> int:
        if not self.sent_by_server or self._first is None:
            raise io.UnsupportedOperation("a segmented body has no single file")
        return self._first.fileno()

    def read(self, size: int | None = -1) -> bytes:
        """The next piece (a framing segment or up to CHUNK bytes of a file; b"" at the end),
        whatever `size`: the WSGI file wrappers iterate read() until it is empty."""
        return next(self._pieces, b"")

    def _read_pieces(self) -> Iterator[bytes]:
        for segment in self.segments:
            if isinstance(segment, bytes):
                yield segment
                continue
            fd = self.open(segment.path).fileno()
            start, left = segment.offset, segment.length
            while left > 0:
                chunk = os.pread(fd, min(CHUNK, left), start)
                if not chunk:
                    raise OSError(f"{segment.path} ended {left} bytes before the range served from it")
                start += len(chunk)
                left -= len(chunk)
                yield chunk

    def close(self) -> None:
        self._close_current()
        if self._first is not None:
            self._first.close()
            self._first = self._first_path = None

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._path = None
