"""What the HTTP fuzz tests share: the profile in force, archives, a request with a time
bound, the checks every answer must pass, and DICOM instances to start mutations from.

Every request goes through Flask's test client to an app on local disk + SQLite, as
`make run` serves it, audit trail included (JSON lines to a file and the audit table), so
fuzzed input goes through the audit writers too.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicom_factory import make_instance, to_bytes
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydicom.encaps import encapsulate
from pydicom.filereader import data_element_generator
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from dicomserver import Settings, close_app, create_app

PROFILES = ("ci", "fuzz")
#: A request must be answered (its whole body read) within this, or the example fails.
ANSWER_WITHIN = 30.0


def active_profile() -> str:
    """DICOMSERVER_FUZZ_PROFILE, else the hypothesis profile loaded if it is one of ours, else "ci"."""
    name = os.environ.get("DICOMSERVER_FUZZ_PROFILE") or settings.get_current_profile_name()
    return name if name in PROFILES else "ci"


def fuzz_settings(weight: float = 1.0, **overrides) -> settings:
    """The active profile for one test; `weight` scales its number of examples (a cheap
    test gets more than an expensive one in the same time). DICOMSERVER_FUZZ_EXAMPLES
    overrides the profile's max_examples (before the weight)."""
    profile = settings.get_profile(active_profile())
    examples = int(os.environ.get("DICOMSERVER_FUZZ_EXAMPLES") or profile.max_examples)
    return settings(profile, max_examples=max(1, round(examples * weight)), **overrides)


# -- archives ------------------------------------------------------------------------


@dataclass
class Archive:
    root: Path
    app: object
    client: object

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def blob_files(self) -> set[str]:
        """Every file under the blob root, '.tmp' included (a refused put must leave nothing)."""
        if not self.blobs.exists():
            return set()
        return {str(p.relative_to(self.blobs)) for p in self.blobs.rglob("*") if p.is_file()}


def new_settings(root: Path) -> Settings:
    return Settings(
        blobstore_url=str(root / "blobs"),
        database_url=f"sqlite:///{root / 'index.db'}",
        audit_log=str(root / "audit.jsonl"),
        audit_store=True,
    )


@contextlib.contextmanager
def archive_at(root: Path) -> Iterator[Archive]:
    root.mkdir(parents=True, exist_ok=True)
    app = create_app(new_settings(root))
    try:
        yield Archive(root, app, app.test_client())
    finally:
        close_app(app)


@contextlib.contextmanager
def fresh_archive() -> Iterator[Archive]:
    """An empty archive of its own, removed afterwards (one per STOW example)."""
    root = Path(tempfile.mkdtemp(prefix="dicomserver-fuzz-"))
    try:
        with archive_at(root) as archive:
            yield archive
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: Characters a client can put in a header value (latin-1, no control characters).
HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def header_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(HEADER_CHARS, max_size=max_size)


# -- requests and the checks on every answer -------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.body)


def send(client, method: str, url: str, *, within: float = ANSWER_WITHIN, **kwargs) -> Answer:
    """One request, its whole answer read; fails if that takes longer than `within` seconds.

    The request runs on a thread of its own so that a hang is a failure rather than a stuck
    test run (the thread is left behind; the example fails either way). An exception that
    escapes the app (not turned into an answer) is re-raised here: in gunicorn it would be
    a dropped connection.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            response = client.open(url, method=method, buffered=True, **kwargs)
            outcome["answer"] = Answer(
                response.status_code,
                {k.lower(): v for k, v in response.headers.items()},
                list(response.headers.items()),
                response.get_data(),
            )
            response.close()
        except BaseException as exc:  # re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fuzz-request", daemon=True)
    thread.start()
    thread.join(within)
    if thread.is_alive():
        raise AssertionError(f"no answer within {within:.0f} s: {method} {url}")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["answer"]  # type: ignore[return-value]


#: What an answer must never show: a traceback, the installation's paths, the Python version.
_PYTHON_VERSION = platform.python_version()
LEAKS = (
    "Traceback",
    "/site-packages",
    'File "',
    f"Python/{_PYTHON_VERSION}",
    f"Python {_PYTHON_VERSION}",
    f"CPython {_PYTHON_VERSION}",
    sys.version.split(" (")[0] + " (",  # '3.11.7 (main, ...' as sys.version prints it
)


def leaks(answer: Answer, echo: bytes | str = b"") -> list[str]:
    """The LEAKS found in an answer's body or headers, leaving out those the request itself
    contained (an error message may quote a fuzzed parameter that happens to hold one)."""
    text = answer.body.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.header_list)
    echoed = echo.decode("latin-1") if isinstance(echo, bytes) else echo
    return [leak for leak in LEAKS if leak in text and leak not in echoed]


def check_answer(answer: Answer, request: str, echo: bytes | str = b"") -> None:
    """What holds for every answer: no 5xx, an error has a body that says why, nothing leaks."""
    assert answer.status < 500, f"{request} -> {answer.status}: {answer.body[:500]!r}"
    found = leaks(answer, echo)
    assert not found, f"{request} -> {answer.status} shows {found}: {answer.body[:500]!r}"
    if 400 <= answer.status < 500 and answer.status != 401:  # 401: empty, with WWW-Authenticate
        assert answer.body.strip(), f"{request} -> {answer.status} with an empty body"


# -- server bugs found, and their replays ------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A server bug a fuzz test found. Its minimal input is replayed by a test of its own
    (`replays`); the property test leaves out generated inputs that `matches`, so that one
    known bug does not hide the next. Delete the entry once the bug is fixed (a strict
    xfail replay that passes says so): its replays then run as regression tests."""

    name: str
    reason: str  # the request and the wrong answer, in a line
    #: In an area the hardening work is fixing now (stow/ingest, search/query/matching,
    #: changes, bulk data Range, ...): its replay is xfail(strict=True). Otherwise the
    #: replay fails until someone fixes it.
    being_fixed: bool
    matches: Callable[..., bool]


def known_bug(bugs: tuple[KnownBug, ...], *args) -> str | None:
    for bug in bugs:
        if bug.matches(*args):
            return bug.name
    return None


def note(text: str) -> None:
    """hypothesis.event() when a property test runs (the statistics); nothing in a replay."""
    if currently_in_test_context():
        event(text)


def replays(bugs: tuple[KnownBug, ...], cases: list[tuple[str, object]]) -> list:
    """pytest params for (bug name, recipe) pairs: strict xfail when the bug is being fixed."""
    import pytest

    by_name = {bug.name: bug for bug in bugs}
    params = []
    for index, (name, recipe) in enumerate(cases):
        bug = by_name.get(name)  # None: fixed, and the case stays as a regression test
        marks = [pytest.mark.xfail(strict=True, reason=bug.reason)] if bug is not None and bug.being_fixed else []
        params.append(pytest.param(recipe, id=f"{name}-{index}", marks=marks))
    return params


# -- DICOM instances to mutate ---------------------------------------------------------

# Fixed UIDs: every example starts from the same bytes, so a failure replays exactly.
_ROOT = "1.2.826.0.1.3680043.10.1011"


def _uids(n: int) -> dict[str, str]:
    return {"study": f"{_ROOT}.{n}.1", "series": f"{_ROOT}.{n}.1.2", "sop": f"{_ROOT}.{n}.1.2.3"}


def _native16() -> bytes:
    return to_bytes(make_instance(**_uids(1)))


def _native8_multiframe() -> bytes:
    return to_bytes(make_instance(**_uids(2), bits=8, frames=3, rows=3, columns=5))


def _implicit() -> bytes:
    return to_bytes(make_instance(**_uids(3), transfer_syntax=ImplicitVRLittleEndian))


def _encapsulated() -> bytes:
    # Not real JPEG streams: STOW locates frames, it never decodes them.
    frames = [b"\xff\xd8\xff\xe0" + bytes(range(12)) + b"\xff\xd9", b"\xff\xd8" + b"\x00" * 9 + b"\xff\xd9"]
    ds = make_instance(**_uids(4), bits=8, frames=2, transfer_syntax=JPEGBaseline8Bit, pixel_data=encapsulate(frames))
    return to_bytes(ds)


def _with_bulkdata_and_sequence() -> bytes:
    from pydicom.dataset import Dataset

    ds = make_instance(**_uids(5))
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = f"{_ROOT}.5.9"
    ds.ReferencedImageSequence = [item, item]
    ds.EncapsulatedDocument = bytes(range(256)) * 8  # 2 KiB: above the inline threshold
    ds.add_new(0x00091010, "LO", "private")
    return to_bytes(ds)


def _deflated() -> bytes:
    from dicom_factory import in_transfer_syntax

    return in_transfer_syntax(make_instance(**_uids(6)), DeflatedExplicitVRLittleEndian)


def _real(name: str):
    def read() -> bytes:
        from dicom_samples import sample

        return sample(name).read_bytes()

    return read


#: name -> how to build it. Small synthetic instances in the forms STOW treats apart, and
#: a few real files (many elements; RLE; JPEG; deflated by another writer).
BASES = {
    "native16": _native16,
    "native8_frames": _native8_multiframe,
    "implicit": _implicit,
    "encapsulated": _encapsulated,
    "bulk_sequence": _with_bulkdata_and_sequence,
    "deflated": _deflated,
    "ct_small": _real("CT_small.dcm"),
    "mr_rle": _real("MR_small_RLE.dcm"),
    "jpeg_real": _real("SC_rgb_jpeg_dcmtk.dcm"),
}


@functools.cache
def base(name: str) -> bytes:
    return BASES[name]()


_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@dataclass(frozen=True)
class Field:
    """A top-level element's header in a file: where its VR (explicit) and length are."""

    tag: int
    vr_offset: int | None  # None: implicit VR
    length_offset: int
    length_size: int  # 2 or 4


@functools.cache
def fields(name: str) -> tuple[Field, ...]:
    """The element headers of a base file: file meta, then the dataset (not for deflated)."""
    data = base(name)
    fp = io.BytesIO(data)
    fp.seek(132)
    found: list[Field] = []

    def collect(implicit: bool, stop=None) -> None:
        for element in data_element_generator(fp, implicit, True, stop_when=stop):
            value_at = element.value_tell
            if implicit:
                found.append(Field(element.tag, None, value_at - 4, 4))
            elif element.VR in _LONG_VRS:
                found.append(Field(element.tag, value_at - 8, value_at - 4, 4))
            else:
                found.append(Field(element.tag, value_at - 4, value_at - 2, 2))

    collect(False, lambda tag, vr, length: tag.group != 2)
    syntax = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax != DeflatedExplicitVRLittleEndian:  # offsets into compressed data mean nothing
        collect(syntax == ImplicitVRLittleEndian)
    return tuple(found)


def mutate(name: str, mutations: tuple[tuple, ...]) -> bytes:
    """A base file with mutations applied in order; positions wrap around the current length.

    ("length", field, value): the length field of element `field` (an index into fields(),
    wrapped) set to `value` (truncated to the field's size); ("vr", field, b"XY"): its VR;
    ("flip", pos, mask): XOR one byte; ("truncate", pos); ("insert", pos, bytes);
    ("delete", pos, n); ("duplicate", pos, n): n bytes at pos repeated in place.
    """
    data = bytearray(base(name))
    headers = fields(name)
    for op, *args in mutations:
        n = len(data)
        if op in ("length", "vr"):
            if not headers:
                continue
            field = headers[args[0] % len(headers)]
            if op == "length":
                size = field.length_size
                data[field.length_offset:field.length_offset + size] = (args[1] % (1 << (8 * size))).to_bytes(size, "little")
            elif field.vr_offset is not None:
                data[field.vr_offset:field.vr_offset + 2] = (args[1] + b"  ")[:2]
        elif n == 0:
            if op == "insert":
                data += args[1]
        elif op == "flip":
            data[args[0] % n] ^= args[1] or 0xFF
        elif op == "truncate":
            del data[args[0] % n:]
        elif op == "insert":
            pos = args[0] % (n + 1)
            data[pos:pos] = args[1]
        elif op == "delete":
            pos = args[0] % n
            del data[pos:pos + args[1]]
        elif op == "duplicate":
            pos = args[0] % n
            data[pos:pos] = data[pos:pos + args[1]]
        else:
            raise ValueError(op)
    return bytes(data)


# -- an independent reader of multipart answers, for the checks -------------------------


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]] | None:
    """The parts of a multipart/related answer (headers lower-cased, body), or None when it
    is not framed as its Content-Type says. Deliberately not dicomserver.multipart."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return None
    delimiter = b"--" + match.group(1).encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        return None
    close = b"\r\n" + delimiter + b"--"
    end = body.rfind(close)
    if end < 0 or body[end + len(close):] not in (b"", b"\r\n"):
        return None
    parts = []
    for chunk in body[len(delimiter) + 2:end].split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            return None
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
