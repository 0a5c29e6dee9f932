"""What the tutorial replays (test_tutorial_*.py) share: the sample files, DICOM JSON tags
and the checks of the DICOM JSON and multipart bodies the server answers.

Each replay keeps its own HTTP layer (requests, curl, dicomweb-client) and checks status and
Content-Type itself; the helpers here look only at the decoded bodies. (tests/live/conftest.py
registers this module for pytest's assertion rewriting.)
"""
from __future__ import annotations

import functools
from io import BytesIO

import pydicom
from dicom_samples import (
    SERIES_BLUE,
    SERIES_GREEN_RED,
    SOP_BLUE,
    SOP_GREEN,
    SOP_RED,
    STUDY_UID,
    sample,
)

TOKEN = "tutorial-token"  # the bearer token the tutorials send

FILE_OF = {SOP_BLUE: "blue-circle.dcm", SOP_GREEN: "green-square.dcm", SOP_RED: "red-triangle.dcm"}
SERIES_OF = {SOP_BLUE: SERIES_BLUE, SOP_GREEN: SERIES_GREEN_RED, SOP_RED: SERIES_GREEN_RED}

TAG_RETRIEVE_URL = "00081190"
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_REFERENCED_SOP_CLASS = "00081150"
TAG_REFERENCED_SOP_INSTANCE = "00081155"
TAG_FAILURE_REASON = "00081197"
TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_PIXEL_DATA = "7FE00010"


# --- sample files --------------------------------------------------------------------------

@functools.cache
def raw(name: str) -> bytes:
    return sample(name).read_bytes()


@functools.cache
def dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(raw(name)))


def native_frame(name: str) -> bytes:
    """The first frame of a sample file's (uncompressed) Pixel Data."""
    ds = dataset(name)
    n = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return ds.PixelData[:n]


# --- checks of response bodies -------------------------------------------------------------

def value(item: dict, tag: str):
    return item[tag]["Value"][0]


def assert_stored_body(body: dict, base_url: str, sops: set[str]) -> None:
    """A STOW response body listing exactly `sops` in ReferencedSOPSequence, nothing failed."""
    assert TAG_FAILED_SOP_SEQUENCE not in body, body
    referenced = body[TAG_REFERENCED_SOP_SEQUENCE]["Value"]
    assert sorted(value(i, TAG_REFERENCED_SOP_INSTANCE) for i in referenced) == sorted(sops)
    for item in referenced:
        sop = value(item, TAG_REFERENCED_SOP_INSTANCE)
        assert value(item, TAG_REFERENCED_SOP_CLASS) == dataset(FILE_OF[sop]).SOPClassUID
        assert value(item, TAG_RETRIEVE_URL) == (
            f"{base_url}/studies/{STUDY_UID}/series/{SERIES_OF[sop]}/instances/{sop}"
        )


def assert_instance_parts(parts, sops: set[str]) -> list[pydicom.Dataset]:
    """Multipart parts of whole instances: exactly `sops`, each byte-identical to its file.

    Returns the parts read as datasets, in the order received.
    """
    datasets = []
    for part in parts:
        # Note that the headers are returned as binary!
        assert part.headers[b"content-type"].startswith(b"application/dicom"), part.headers
        dcm = pydicom.dcmread(BytesIO(part.content))
        sop = str(dcm.SOPInstanceUID)
        assert sop in FILE_OF, sop
        assert part.content == raw(FILE_OF[sop]), f"{sop}: retrieved bytes differ from the stored file"
        datasets.append(dcm)
    assert sorted(str(dcm.SOPInstanceUID) for dcm in datasets) == sorted(sops)
    return datasets


def assert_metadata_documents(documents: list[dict], sops: set[str]) -> None:
    """WADO-RS metadata: one document for each of `sops`, in its study and series."""
    assert sorted(value(d, TAG_SOP_UID) for d in documents) == sorted(sops)
    for document in documents:
        sop = value(document, TAG_SOP_UID)
        assert value(document, TAG_STUDY_UID) == STUDY_UID
        assert value(document, TAG_SERIES_UID) == SERIES_OF[sop]
        # Pixel Data is never inlined: only a BulkDataURI pointing at this instance.
        assert set(document[TAG_PIXEL_DATA]) == {"vr", "BulkDataURI"}
        assert document[TAG_PIXEL_DATA]["BulkDataURI"].endswith(f"/instances/{sop}/bulkdata/7FE00010")


def assert_one_result(results: list[dict], tag: str, uid: str) -> None:
    """A QIDO answer of exactly one result, whose `tag` is `uid`."""
    assert len(results) == 1, results
    assert value(results[0], tag) == uid
