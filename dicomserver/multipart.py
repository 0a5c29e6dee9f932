"""Streaming multipart/related reader and writer (RFC 2046 section 5.1, RFC 2387).

This module owns the byte-level framing of multipart bodies: STOW-RS requests come in
as multipart/related bodies of DICOM files, and WADO-RS responses go out as them. It
knows nothing about DICOM, HTTP or Flask, and imports only the standard library.

The reader is sans-IO: callers `feed()` bytes, `close()` at end of input, and pull
events with `next_event()` (`iter_events()` is the driver for a file-like stream such
as ``wsgi.input``). Parts can be hundreds of megabytes, so the reader never holds a
whole part: part data is handed out as soon as it cannot be the start of a delimiter,
and only the tail of the buffer that might begin a delimiter split across two reads is
kept back. Each input byte is searched a bounded number of times, so parsing is linear.
Part data is handed out as memoryviews of the bytes fed in, never copied: the input is
kept as immutable bytes and a read position, so a megabyte read costs one search.

The structure (events, an explicit state enum, a driver) follows werkzeug's
``sansio/multipart.py``; the code is our own and accepts what real DICOMweb clients
send: a missing boundary parameter, a leading CRLF, transport padding, no CRLF after
the close delimiter, form-data parts, parts without headers.
"""
from __future__ import annotations

import enum
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "END",
    "NEED_DATA",
    "PART_END",
    "End",
    "MultipartError",
    "MultipartReader",
    "MultipartWriter",
    "PartData",
    "PartEnd",
    "PartStart",
    "iter_events",
]

CRLF = b"\r\n"
_PADDING = b" \t"  # transport padding allowed between a delimiter and its CRLF


class MultipartError(ValueError):
    """Malformed or truncated body; message says what was wrong (it becomes a 400 body)."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PartStart:
    """A part's header block has been read; its data follows as PartData events."""

    headers: dict[str, str]  # names lower-cased, values stripped, folded lines joined

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class PartData:
    """A chunk of the current part's body (never empty).

    A read-only memoryview of the bytes fed in (or bytes): no copy is made of part data,
    and the view stays valid, since the reader never changes bytes it was given.
    """

    data: bytes | memoryview


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete: the delimiter line after it was read in full."""


@dataclass(frozen=True)
class End:
    """The close delimiter was read: the body is complete; anything after is ignored."""


class _NeedData:
    """Type of NEED_DATA: the reader cannot go on until it is fed or closed."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


PART_END = PartEnd()
END = End()
NEED_DATA = _NeedData()

Event = PartStart | PartData | PartEnd | End


# --------------------------------------------------------------------------- reader


class State(enum.Enum):
    """Where in the body the reader is; each state has one handler method."""

    PREAMBLE = "preamble"  # before the first delimiter (or discovering the boundary)
    DELIMITER = "delimiter"  # "--boundary" consumed; expecting "--" or padding + CRLF
    HEADERS = "headers"  # inside a part's header block
    DATA = "data"  # inside a part's body
    EPILOGUE = "epilogue"  # close delimiter seen; remaining input is discarded
    FAILED = "failed"  # a MultipartError was raised; it is raised again on every call


def _suffix_prefix_start(buf: bytes, needle: bytes, start: int = 0) -> int:
    """Index of the longest suffix of `buf[start:]` that is a proper prefix of `needle`.

    Returns len(buf) when there is none. That suffix is what must be kept back because
    the next read may complete it into `needle`; everything before it is safe to release.
    Only the last len(needle) - 1 bytes are examined, so the cost is bounded by the
    needle length, not the buffer.
    """
    n = len(buf)
    first = needle[:1]
    i = buf.find(first, max(start, n - len(needle) + 1))
    while i >= 0:
        if needle.startswith(buf[i:]):
            return i
        i = buf.find(first, i + 1)
    return n


def _decode_header(raw: bytes) -> str:
    # Header values (filenames) are sometimes UTF-8; latin-1 never fails as a fallback.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class MultipartReader:
    """Incremental multipart/related parser: feed bytes in, pull events out.

    `boundary` is the Content-Type boundary parameter with any quotes removed. When it
    is None (clients do send a bare ``multipart/related``), the first line of the body
    that starts with ``--`` is taken as the first delimiter and the boundary is the rest
    of that line without trailing whitespace. A first line of the form ``--X--`` is then
    read as a close delimiter (an empty body), so a discovered boundary cannot end in "--".

    Inside a part only CRLF + "--" + boundary ends the part (binary data may contain
    bare LF). In the preamble a delimiter may follow a bare LF. After the boundary comes
    either "--" (close delimiter) or optional spaces/tabs and CRLF (or LF); anything else
    is an error. A truncated part is never reported complete: PartEnd is only emitted
    once the following delimiter line has been read in full.
    """

    def __init__(
        self,
        boundary: str | None = None,
        *,
        max_header_bytes: int = 16384,
        max_parts: int = 10000,
    ) -> None:
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        # The unread input is _buffer[_start:]. _buffer is never changed in place (feed
        # replaces it), so the memoryviews PartData hands out of it stay valid.
        self._buffer = b""
        self._start = 0
        self._pos = 0  # where the next newline search in _buffer starts (an index into it)
        self._closed = False
        self._received = 0
        self._state = State.PREAMBLE
        self._events: deque[Event] = deque()
        self._error: MultipartError | None = None
        # PREAMBLE
        self._at_body_start = True  # nothing has been discarded yet
        self._skip_line = False  # discovering: the current line is preamble text
        # HEADERS / DATA
        self._in_part = False
        self._parts = 0
        self._header_bytes = 0
        self._headers: list[list[str]] = []
        self._boundary: str | None = None
        self._dash_boundary = b""  # b"--" + boundary
        self._delimiter = b""  # CRLF + b"--" + boundary: the only thing that ends a part
        if boundary is not None:
            self._set_boundary(boundary)

    @property
    def boundary(self) -> str | None:
        """The boundary in use: as given, or as discovered from the body (else None)."""
        return self._boundary

    @property
    def state(self) -> State:
        """Current parsing state (for diagnostics and tests)."""
        return self._state

    def feed(self, data: bytes) -> None:
        """Append input. After the close delimiter, input is the epilogue and dropped.

        bytes are kept as given (part data is handed out as views of them); anything
        else is copied once, since a caller may change a bytearray it fed.
        """
        if self._closed:
            raise RuntimeError("feed() after close()")
        self._received += len(data)
        if self._state is State.EPILOGUE or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        start = self._start
        if start >= len(self._buffer):  # all read: the usual case inside a part, no copy
            self._buffer = data
            self._pos = 0
        else:  # a short unread tail (a delimiter or header line cut by the read)
            self._buffer = self._buffer[start:] + data
            self._pos = max(self._pos - start, 0)
        self._start = 0

    def close(self) -> None:
        """Signal end of input; next_event() then raises if the body is incomplete."""
        self._closed = True

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or NEED_DATA; raise MultipartError on a bad body."""
        if self._error is not None:
            raise self._error
        try:
            while not self._events:
                event = self._step()
                if event is NEED_DATA:
                    if self._closed:
                        raise self._eof_error()
                    return NEED_DATA
                if event is not None:
                    return event
            return self._events.popleft()
        except MultipartError as exc:
            self._state = State.FAILED
            self._error = exc
            raise

    # ---------------------------------------------------------------- internals

    def _step(self) -> Event | _NeedData | None:
        """Advance once: an event, NEED_DATA, or None when only the state changed."""
        state = self._state
        if state is State.DATA:
            return self._read_data()
        if state is State.HEADERS:
            return self._read_headers()
        if state is State.DELIMITER:
            return self._read_delimiter_tail()
        if state is State.PREAMBLE:
            if self._boundary is None:
                return self._discover_boundary()
            return self._read_preamble()
        if state is State.EPILOGUE:
            self._clear()
            return END
        raise AssertionError(state)  # pragma: no cover - FAILED is handled by caller

    def _set_boundary(self, boundary: str) -> None:
        if not boundary:
            raise MultipartError("empty multipart boundary")
        try:
            raw = boundary.encode("latin-1")
        except UnicodeEncodeError:
            raise MultipartError(f"invalid multipart boundary {boundary!r}") from None
        if b"\r" in raw or b"\n" in raw:
            raise MultipartError(f"invalid multipart boundary {boundary!r}")
        self._boundary = boundary
        self._dash_boundary = b"--" + raw
        self._delimiter = CRLF + self._dash_boundary

    def _eof_error(self) -> MultipartError:
        if self._state is State.PREAMBLE:
            if self._received == 0:
                return MultipartError("no multipart boundary line found: the body is empty")
            if self._boundary is not None:
                return MultipartError(
                    f"no multipart boundary line found (expected '--{self._boundary}')"
                )
            return MultipartError("no multipart boundary line found")
        return MultipartError("multipart body ended before the closing boundary")

    def _consume(self, n: int) -> None:
        self._start += n
        self._pos = self._start

    def _consume_to(self, index: int) -> None:
        self._start = self._pos = index

    def _clear(self) -> None:
        self._buffer = b""
        self._start = self._pos = 0

    def _unread(self) -> int:
        return len(self._buffer) - self._start

    def _read_preamble(self) -> _NeedData | None:
        """Skip preamble text up to the first "--boundary" at the start of a line."""
        buf, start, dash = self._buffer, self._start, self._dash_boundary
        if self._at_body_start:
            if self._unread() < len(dash) and dash.startswith(buf[start:]):
                return NEED_DATA
            self._at_body_start = False
            if buf.startswith(dash, start):
                self._consume(len(dash))
                self._state = State.DELIMITER
                return None
        needle = b"\n" + dash
        idx = buf.find(needle, start)
        if idx >= 0:
            self._consume_to(idx + len(needle))
            self._state = State.DELIMITER
            return None
        self._consume_to(_suffix_prefix_start(buf, needle, start))
        return NEED_DATA

    def _discover_boundary(self) -> _NeedData | None:
        """Find the first line starting with "--" and take the boundary from it."""
        buf = self._buffer
        while True:
            start = self._start
            if self._skip_line:
                idx = buf.find(b"\n", start)
                if idx < 0:
                    self._consume_to(len(buf))
                    return NEED_DATA
                self._consume_to(idx + 1)
                self._skip_line = False
                start = self._start
            if start >= len(buf):
                return NEED_DATA
            if buf[start : start + 1] != b"-" or (
                len(buf) - start >= 2 and buf[start : start + 2] != b"--"
            ):
                self._skip_line = True  # preamble text (or a blank line)
                continue
            if len(buf) - start < 2:
                return NEED_DATA
            break
        idx = buf.find(b"\n", max(self._pos, start))
        if (len(buf) if idx < 0 else idx) - start > self._max_header_bytes:
            raise MultipartError("multipart boundary line too long")
        if idx < 0:
            self._pos = len(buf)
            if not self._closed:
                return NEED_DATA
            line = buf[start + 2 :]  # the last line may lack its newline ("--b--" at EOF)
        else:
            line = buf[start + 2 : idx]
        line = line.rstrip(_PADDING + b"\r")
        closing = line.endswith(b"--")
        raw = line[:-2] if closing else line
        self._set_boundary(raw.decode("latin-1"))
        self._consume(len(self._dash_boundary))
        self._state = State.DELIMITER
        return None

    def _read_delimiter_tail(self) -> Event | _NeedData | None:
        """After "--boundary": "--" closes the body; padding + CRLF starts a part."""
        buf, start = self._buffer, self._start
        if buf[start : start + 1] == b"-":
            if len(buf) - start < 2:
                return NEED_DATA
            if buf[start + 1 : start + 2] != b"-":
                raise self._garbage_error()
            self._state = State.EPILOGUE
            self._clear()
            if self._in_part:
                self._in_part = False
                self._events.append(PART_END)
            self._events.append(END)
            return None
        end = start
        while end < len(buf) and buf[end] in _PADDING:
            end += 1
        if end > start:
            self._consume_to(end)
            start = end
        if start >= len(buf) or (start == len(buf) - 1 and buf[start] == 13):  # nothing or a lone CR yet
            return NEED_DATA
        if buf.startswith(CRLF, start):
            self._consume(2)
        elif buf.startswith(b"\n", start):
            self._consume(1)
        else:
            raise self._garbage_error()
        self._parts += 1
        if self._parts > self._max_parts:
            raise MultipartError(f"too many parts in multipart body (limit {self._max_parts})")
        self._state = State.HEADERS
        self._header_bytes = 0
        self._headers = []
        if self._in_part:
            self._in_part = False
            return PART_END
        return None

    def _garbage_error(self) -> MultipartError:
        found = self._buffer[self._start : self._start + 20]
        return MultipartError(
            f"unexpected {found!r} after multipart boundary '--{self._boundary}' "
            "(expected CRLF or '--')"
        )

    def _read_headers(self) -> PartStart | _NeedData | None:
        """Read header lines up to the blank line; LF alone is accepted as a line end."""
        buf = self._buffer
        while True:
            start = self._start
            idx = buf.find(b"\n", max(self._pos, start))
            if idx < 0:
                self._pos = len(buf)
                if self._header_bytes + len(buf) - start > self._max_header_bytes:
                    raise self._header_size_error()
                return NEED_DATA
            line = buf[start:idx]
            self._consume_to(idx + 1)
            self._header_bytes += idx + 1 - start
            if self._header_bytes > self._max_header_bytes:
                raise self._header_size_error()
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                break
            self._add_header_line(_decode_header(line))
        headers: dict[str, str] = {}
        for name, value in self._headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._headers = []
        self._state = State.DATA
        self._in_part = True
        return PartStart(headers)

    def _add_header_line(self, line: str) -> None:
        if line[:1] in (" ", "\t"):  # obsolete line folding
            if not self._headers:
                raise MultipartError(f"part header continuation line without a header: {line!r}")
            self._headers[-1][1] = f"{self._headers[-1][1]} {line.strip()}".strip()
            return
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise MultipartError(f"malformed part header line (no name/colon): {line[:80]!r}")
        self._headers.append([name.lower(), value.strip()])

    def _header_size_error(self) -> MultipartError:
        return MultipartError(f"part header block exceeds {self._max_header_bytes} bytes")

    def _read_data(self) -> PartData | _NeedData | None:
        """Release part data up to the next delimiter, or up to a possible delimiter start.

        The search always starts at the read position: after a miss only a tail shorter
        than the delimiter is left unread, so at most len(delimiter) bytes are ever
        searched twice. The data is a view of the input, not a copy.
        """
        buf, start, delim = self._buffer, self._start, self._delimiter
        idx = buf.find(delim, start)
        if idx == start:
            self._consume(len(delim))
            self._state = State.DELIMITER
            return None
        if idx < 0:
            idx = _suffix_prefix_start(buf, delim, start)
            if idx == start:
                return NEED_DATA
        self._consume_to(idx)
        return PartData(memoryview(buf)[start:idx])


def iter_events(
    read: Callable[[int], bytes],
    boundary: str | None,
    *,
    chunk_size: int = 65536,
    **reader_kwargs: int,
) -> Iterator[Event]:
    """Parse a stream (e.g. ``wsgi.input.read``) into events, ``chunk_size`` at a time.

    Raises MultipartError if the stream ends (``read`` returns b"") before the close
    delimiter. Stops reading once End has been yielded: the epilogue is never read.
    """
    reader = MultipartReader(boundary, **reader_kwargs)
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            chunk = read(chunk_size)
            if chunk:
                reader.feed(chunk)
            else:
                reader.close()
            continue
        yield event  # type: ignore[misc]
        if event is END:
            return


# --------------------------------------------------------------------------- writer

# RFC 2046 bchars; a boundary must not end with a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class MultipartWriter:
    """Produces multipart/related framing; part bodies are streamed by the caller.

    The writer only makes the bytes around parts (delimiter + headers, close
    delimiter), so bodies can be streamed from storage without being copied into it.
    """

    def __init__(self, boundary: str | None = None) -> None:
        if boundary is None:
            boundary = uuid.uuid4().hex
        if not _BOUNDARY_RE.fullmatch(boundary):
            raise ValueError(f"invalid multipart boundary {boundary!r}")
        self.boundary: str = boundary
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._started = False
        self._closed = False

    def content_type(self, type_: str | None = None) -> str:
        """The Content-Type header value, e.g. for ``type_="application/dicom"``."""
        boundary = self.boundary
        if not _TOKEN_RE.fullmatch(boundary):
            boundary = f'"{boundary}"'
        if type_ is None:
            return f"multipart/related; boundary={boundary}"
        return f'multipart/related; type="{type_}"; boundary={boundary}'

    def part_head(self, headers: Mapping[str, str]) -> bytes:
        """Delimiter line and header block that go before a part's body."""
        if self._closed:
            raise RuntimeError("part_head() after close()")
        head = self._head(headers, first=not self._started)
        self._started = True
        return head

    def close(self) -> bytes:
        """The close delimiter (preceded by the CRLF that ends the last part's body)."""
        if self._closed:
            raise RuntimeError("close() called twice")
        self._closed = True
        return self._close(first=not self._started)

    def framing_size(self, headers_list: Sequence[Mapping[str, str]]) -> int:
        """Bytes that part_head() for each of these parts plus close() will produce.

        Lets callers send Content-Length = framing_size + sum of body sizes before
        writing anything; the writer's state is not changed.
        """
        first = not self._started
        size = 0
        for headers in headers_list:
            size += len(self._head(headers, first=first))
            first = False
        return size + len(self._close(first=first))

    def _head(self, headers: Mapping[str, str], *, first: bool) -> bytes:
        if not any(name.lower() == "content-type" for name in headers):
            raise ValueError("every part needs a Content-Type header")
        lines = [] if first else [b""]
        lines.append(self._dash_boundary)
        for name, value in headers.items():
            if not name or ":" in name or any(c in name + value for c in "\r\n"):
                raise ValueError(f"invalid part header {name!r}: {value!r}")
            lines.append(f"{name}: {value}".encode())
        lines.append(CRLF)
        return CRLF.join(lines)

    def _close(self, *, first: bool) -> bytes:
        return (b"" if first else CRLF) + self._dash_boundary + b"--" + CRLF
