"""The raw-bytes reader (dicomserver/header.py) gives STOW exactly what pydicom gives it.

`Ingestor.prepare` reads the common case from the element stream and leaves everything
else to pydicom. Every file here goes through both paths: where the fast path does not
decline, the two `Prepared` (metadata JSON byte for byte and in the same order, frame map,
bulk data map, invalid attributes, result with warning and comments) or the two
rejections (reason, comments, the result filled as far as it got) must be identical, and
`prepare` must give what pydicom gives. `identify` (the import's first look) likewise.
The files: all of pydicom's test data, tests/data, instances built with edge-case,
invalid or odd values, the corrupt instances of tests/test_corrupt_instances.py, many
malformed headers (truncated, odd or too long lengths, undefined lengths, wrong VRs,
random byte damage) and generated values of every VR. The fast path must take the common
cases (else this would compare nothing), and a divergence fails the test
(`test_the_comparison_catches_a_difference`).
"""
from __future__ import annotations

import io
import json
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dicom_factory import element_offsets, explicit_element, make_instance, to_bytes, with_element_before
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian, JPEGBaseline8Bit
from test_corrupt_instances import CORRUPT, undefined_length_sequence
from test_stow_validation import _VALUES

from dicomserver import header
from dicomserver.ingest import (
    Ingestor,
    InstanceRejected,
    NotPart10,
    PartResult,
    _identify_fast,
    _identify_pydicom,
    identify,
)

DATA = Path(__file__).parent / "data"
PATIENT_NAME = 0x00100010
INGESTOR = Ingestor(None, None)  # type: ignore[arg-type]  # prepare touches neither store nor index


def outcome(prepare: Callable, data: bytes, study_uid: str | None = None, threshold: int = 1024) -> tuple:
    """What a prepare function makes of `data`, as comparable text."""
    INGESTOR.bulkdata_inline_threshold = threshold
    fp = io.BytesIO(data)
    result = PartResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if prepare is Ingestor.prepare:
                prepared = INGESTOR.prepare(fp, len(data), study_uid=study_uid)
            else:
                prepared = prepare(INGESTOR, fp, len(data), study_uid, result)
        except InstanceRejected as rejection:
            if prepare is not Ingestor.prepare:  # what prepare does with the result of either path
                result.failure_reason, result.warning_reason, result.comments = rejection.reason, None, rejection.comments
                rejection.result = result
            return ("rejected", rejection.reason, rejection.comments, vars(rejection.result))
    return (
        "prepared",
        vars(prepared.result),
        prepared.transfer_syntax,
        json.dumps(prepared.frame_map, sort_keys=True),
        json.dumps(prepared.metadata, sort_keys=True),
        list(prepared.metadata),  # and in the same order (the index stores it as it is)
        json.dumps(prepared.bulk, sort_keys=True),
        sorted(prepared.invalid),
    )


def fast(data: bytes, study_uid: str | None = None, threshold: int = 1024) -> tuple | None:
    """The fast path's outcome, None when it declines the file."""
    try:
        return outcome(Ingestor._prepare_fast, data, study_uid, threshold)
    except header.Unhandled:
        return None


def assert_same(data: bytes, study_uid: str | None = None, threshold: int = 1024) -> bool:
    """Both paths agree (when the fast one takes the file) and prepare agrees with pydicom;
    whether the fast path took it."""
    reference = outcome(Ingestor._prepare_pydicom, data, study_uid, threshold)
    quick = fast(data, study_uid, threshold)
    if quick is not None:
        assert quick == reference
    assert outcome(Ingestor.prepare, data, study_uid, threshold) == reference
    return quick is not None


def identity(function: Callable, data: bytes) -> object:
    """What an identify function makes of `data`, as comparable values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = function(io.BytesIO(data))
        except NotPart10 as rejection:
            return ("not Part 10", rejection.comments)
    return None if result is None else vars(result)


def assert_same_identity(data: bytes) -> bool:
    """`identify` from raw bytes agrees with pydicom's (when it takes the file); whether it did."""
    reference = identity(_identify_pydicom, data)
    try:
        quick = identity(_identify_fast, data)
    except header.Unhandled:
        quick = header.Unhandled
    if quick is not header.Unhandled:
        assert quick == reference
    assert identity(identify, data) == reference
    return quick is not header.Unhandled


# -- real files -------------------------------------------------------------------------------


def _pydicom_files() -> list[str]:
    return sorted(f for f in get_testdata_files() if Path(f).is_file())


def test_every_pydicom_test_file_and_sample():
    files = _pydicom_files() + sorted(str(p) for p in DATA.glob("*.dcm"))
    assert len(files) > 200
    taken = [f for f in files if assert_same(Path(f).read_bytes())]
    # The common encodings are read by the fast path (so this test compares something).
    assert len(taken) > 150
    assert {"CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "blue-circle.dcm"} <= {Path(f).name for f in taken}
    identified = [f for f in files if assert_same_identity(Path(f).read_bytes())]
    assert len(identified) > 150


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "SC_rgb.dcm"])
def test_real_files_under_other_thresholds_and_a_wrong_study(name):
    data = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    for threshold in (0, 16, 100_000, 1 << 21):
        assert assert_same(data, threshold=threshold)
    assert assert_same(data, study_uid="1.2.3")  # refused: not the study in the URL
    study = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    assert assert_same(data, study_uid=study)


# -- built instances --------------------------------------------------------------------------


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


#: Instances the fast path must take (and agree on).
TAKEN: dict[str, Callable[[], bytes]] = {
    "plain": lambda: to_bytes(make_instance()),
    "bench-like CT": lambda: to_bytes(make_instance(
        rows=64, columns=64, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], PixelSpacing=[0.7, 0.7],
        SliceThickness=2.5, ImagePositionPatient=[-179.2, -179.2, -2.5], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400, Manufacturer="x",
    )),
    "implicit VR": lambda: to_bytes(make_instance(transfer_syntax=ImplicitVRLittleEndian)),
    "multi-frame, 8 bits": lambda: to_bytes(make_instance(frames=3, bits=8)),
    "no pixel data": lambda: to_bytes(make_instance(with_pixel_data=False)),
    "Latin-1 names": lambda: to_bytes(make_instance(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen",
                                                    StudyDescription="Épaule\\Coude")),
    "UTF-8 names": lambda: to_bytes(make_instance(SpecificCharacterSet="ISO_IR 192", PatientName="Dürst^José=山田^太郎=やまだ^たろう",
                                                  InstitutionName="Åre sjukhus")),
    "empty character set": lambda: to_bytes(make_instance(SpecificCharacterSet="")),
    "names with components": lambda: to_bytes(make_instance(PatientName="A^B^C^D^E=F", ReferringPhysicianName="=X",
                                                            OtherPatientNames=["A^B", "C^D "], PerformingPhysicianName="")),
    "multi-valued strings with empty values": lambda: to_bytes(make_instance(
        ImageType=["ORIGINAL", "", "AXIAL "], OtherPatientIDs=["", "X"], ReferencedFileID=["A", ""], Modality=" CT",
        PatientSex=" ", BodyPartExamined="  CHEST ", ConversionType=" \0", PatientID="\0",
        StudyDescription="", SeriesDescription="  ",
    )),
    "numbers": lambda: to_bytes(make_instance(
        PixelSpacing=[" 1e3 ", "+.5"], SliceThickness="-0.0", WindowCenter=["1", "2"], ImagesInAcquisition="  ",
        SeriesNumber=" 007 ", AcquisitionNumber="+3", RescaleIntercept="  -1024", LargestImagePixelValue=4095,
        FrameTime=0.1, ReferencePixelX0=-5, RealWorldValueLUTData=[1.5, -2.25],
    )),
    "tags, dates, times, AE, UR, UC": lambda: to_bytes(make_instance(
        FrameIncrementPointer=[0x00181063, 0x00181065], StudyTime="083000.123456", AcquisitionDateTime="20240101083000+0100",
        RetrieveAETitle=[" AE1 ", "AE2"], RetrieveURL="http://example.org/a?b=c", PatientAge="045Y",
        StrainAdditionalInformation="x" * 100, ContentDate="20240101-20240201",
    )),
    "long and empty texts": lambda: to_bytes(make_instance(
        ImageComments="line 1\r\nline 2  ", AdditionalPatientHistory="", StudyComments="x" * 10240,
        TextValue="a\\b c ",
    )),
    "binary values of every size": lambda: to_bytes(make_instance(
        IconImageSequence=[_item(Rows=40, Columns=50, BitsAllocated=8, PixelData=bytes(range(200)) * 10)],
        ReferencedImageSequence=[_item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID="1.2.4")],
        RedPaletteColorLookupTableData=bytes(100), GreenPaletteColorLookupTableData=bytes(3000),
        BluePaletteColorLookupTableData=bytes(70_000), SegmentedRedPaletteColorLookupTableData=b"",
    )),
    "nested sequences": lambda: to_bytes(make_instance(
        ReferencedStudySequence=[],
        RequestAttributesSequence=[
            _item(RequestedProcedureID="1", ScheduledProtocolCodeSequence=[
                _item(CodeValue="A", CodingSchemeDesignator="DCM", CodeMeaning="a"),
                _item(CodeValue="B", CodingSchemeDesignator="DCM", CodeMeaning="b", ContextUID="1.2"),
            ]),
            _item(),
        ],
    )),
    "undefined-length sequences": lambda: with_element_before(
        to_bytes(make_instance()), PATIENT_NAME,
        undefined_length_sequence(
            0x00081140,
            explicit_element(0x00081150, "UI", b"1.2.3\x00")
            + explicit_element(0x00081155, "UI", b"1.2.4\x00")
            + explicit_element(0x00282000, "OB", bytes(range(256)) * 8),
            b"",
        ),
    ),
    "US or SS in implicit VR, unsigned": lambda: to_bytes(make_instance(
        transfer_syntax=ImplicitVRLittleEndian, SmallestImagePixelValue=0, LargestImagePixelValue=40000)),
    "US or SS in implicit VR, signed": lambda: _signed_implicit(),
    "UN of unknown tags": lambda: with_element_before(
        to_bytes(make_instance()), PATIENT_NAME,
        explicit_element(0x00090003, "UN", b"ab") + explicit_element(0x00090010, "LO", b"NOBODY KNOWS")
        + explicit_element(0x00091001, "UN", b"1.5 ") + explicit_element(0x00091002, "UN", bytes(5000))
        + explicit_element(0x00091003, "UN", bytes(70_000)) + explicit_element(0x000B1001, "UN", b"no creator"),
    ) + explicit_element(0xFFFBFFFB, "UN", b"xy"),
    "trailing padding": lambda: to_bytes(make_instance()) + explicit_element(0xFFFCFFFC, "OB", bytes(10)),
    "encapsulated": lambda: _jpeg(),
}


def _jpeg() -> bytes:
    from dicom_samples import _mono8_jpeg

    return _mono8_jpeg()


def _raw_value(keyword: str, vr: str, value: bytes) -> bytes:
    """An instance whose top-level `keyword` holds exactly these bytes (pydicom would rewrite
    a value it cannot take, so the element is spliced into the file)."""
    tag = Tag(keyword)
    data = to_bytes(make_instance())
    offsets = element_offsets(data)
    element = explicit_element(tag, vr, value)
    if tag in offsets:
        start, length_at, value_at = offsets[tag]
        (length,) = struct.unpack_from("<L" if value_at - start == 12 else "<H", data, length_at)
        return data[:start] + element + data[value_at + length:]
    return with_element_before(data, min(t for t in offsets if t > tag), element)


def _even(text: str) -> bytes:
    data = text.encode("utf-8")
    return data + b" " if len(data) % 2 else data


#: Instances the fast path may decline; both must still agree (and prepare with pydicom).
EITHER: dict[str, Callable[[], bytes]] = {
    **{
        f"{vr} value {value!r}": (lambda keyword=keyword, vr=vr, value=value: _raw_value(keyword, vr, _even(value)))
        for vr, keyword in {
            "AE": "RetrieveAETitle", "AS": "PatientAge", "CS": "BodyPartExamined", "DA": "StudyDate", "DS": "SliceThickness",
            "DT": "AcquisitionDateTime", "IS": "AcquisitionNumber", "LO": "Manufacturer", "LT": "AdditionalPatientHistory",
            "SH": "StationName", "ST": "InstitutionAddress", "TM": "StudyTime", "UI": "FrameOfReferenceUID",
            "UR": "RetrieveURL", "UT": "StrainAdditionalInformation", "PN": "ReferringPhysicianName",
        }.items()
        for value in _VALUES[vr]
    },
    "missing and invalid UIDs": lambda: _without("SOPClassUID", SeriesInstanceUID="1.2.x"),
    "empty SOP Instance UID": lambda: to_bytes(make_instance(sop="")),
    "several study UIDs": lambda: to_bytes(make_instance(StudyInstanceUID=["1.2", "1.3"])),
    "UID with a space": lambda: to_bytes(make_instance(SeriesInstanceUID="1.2.3 ")),
    "invalid value in a sequence": lambda: to_bytes(make_instance(ReferencedImageSequence=[
        _item(ReferencedSOPInstanceUID="1.2.abc", ReferencedSOPClassUID="1.2.3")])),
    "IS out of 32 bits": lambda: to_bytes(make_instance(AcquisitionNumber="9999999999")),
    "IS as a float": lambda: to_bytes(make_instance(AcquisitionNumber="1.0")),
    "DS with an empty value among several": lambda: to_bytes(make_instance(PixelSpacing=["1", ""])),
    "names with four components": lambda: _raw_value("PatientName", "PN", b"A=B=C=D "),
    "an empty name among several": lambda: _raw_value("OtherPatientNames", "PN", b"A\\"),
    "a name of only '='": lambda: _raw_value("PatientName", "PN", b"= "),
    "a name of only '=='": lambda: _raw_value("PatientName", "PN", b"=="),
    "names with trailing '='": lambda: _raw_value("OtherPatientNames", "PN", b"A=B=\\C==\\=D"),
    "ISO 2022 character set": lambda: to_bytes(make_instance(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="Yamada")),
    "GB18030": lambda: to_bytes(make_instance(SpecificCharacterSet="GB18030", PatientName="王^小东")),
    "invalid UTF-8": lambda: _patched(to_bytes(make_instance(SpecificCharacterSet="ISO_IR 192", PatientName="Dxxrst")), b"Dxxrst", b"D\xff\xferst"),
    "US of 3 bytes": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME,
                                                explicit_element(0x00081001, "US", b"abc")),
    "AT of 6 bytes": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME, explicit_element(0x00082001, "AT", bytes(6))),
    "UN of a known tag": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME, explicit_element(0x00081030, "UN", b"ABCD")),
    "UN of a known private tag": lambda: with_element_before(
        to_bytes(make_instance()), 0x7FE00010,
        explicit_element(0x00290010, "LO", b"SIEMENS CSA HEADER") + explicit_element(0x00291008, "UN", b"IMAGE NUM 4 ")),
    "UN private creator": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME, explicit_element(0x00090010, "UN", b"ACME")),
    "UN of undefined length": lambda: with_element_before(
        to_bytes(make_instance()), PATIENT_NAME,
        explicit_element(0x00090010, "LO", b"ACME") + explicit_element(0x00091001, "UN", b"", length=0xFFFFFFFF)
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"),
    "private elements": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME,
                                                    explicit_element(0x00090010, "LO", b"ACME") + explicit_element(0x00091001, "DS", b"1.5 ")),
    "large text past the defer size": lambda: to_bytes(make_instance(StrainAdditionalInformation="y" * 70_000)),
    "LUT descriptor": lambda: to_bytes(make_instance(RedPaletteColorLookupTableDescriptor=[256, 0, 16])),
    "private tag in implicit VR": lambda: _implicit_private(),
    "a tag out of order": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME,
                                                     explicit_element(0x00200052, "UI", b"1.2.3\x00")),
    "a tag twice": lambda: with_element_before(to_bytes(make_instance()), PATIENT_NAME, explicit_element(0x00200013, "IS", b"5 ")),
    "group length": lambda: with_element_before(to_bytes(make_instance()), 0x00080016, explicit_element(0x00080000, "UL", struct.pack("<L", 4))),
    "extended offset table": lambda: to_bytes(make_instance(transfer_syntax=JPEGBaseline8Bit, pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
                                                            b"\xfe\xff\x00\xe0\x04\x00\x00\x00\xff\xd8\xff\xd9\xfe\xff\xdd\xe0\x00\x00\x00\x00",
                                                            ExtendedOffsetTable=bytes(8), ExtendedOffsetTableLengths=struct.pack("<Q", 4))),
    **{f"corrupt: {name}": make for name, (make, _message) in CORRUPT.items()},
}


def _signed_implicit() -> bytes:
    ds = make_instance(transfer_syntax=ImplicitVRLittleEndian)
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -5
    ds.PixelPaddingValue = -2000
    return to_bytes(ds)


def _without(keyword: str, **attributes) -> bytes:
    ds = make_instance(**attributes)
    delattr(ds, keyword)
    return to_bytes(ds)


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def _implicit_private() -> bytes:
    ds = make_instance(transfer_syntax=ImplicitVRLittleEndian)
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "x")
    return to_bytes(ds)


@pytest.mark.parametrize("name", list(TAKEN))
def test_the_fast_path_takes_the_common_cases_and_agrees(name):
    data = TAKEN[name]()
    assert assert_same(data), f"the fast path declined {name}"
    assert assert_same_identity(data)
    assert assert_same(data, threshold=0)
    assert assert_same(data, threshold=100_000)


@pytest.mark.parametrize("name", list(EITHER))
def test_odd_and_invalid_instances_give_the_same_outcome(name):
    data = EITHER[name]()
    assert_same(data)
    assert_same_identity(data)


# -- malformed headers ------------------------------------------------------------------------


def _base() -> bytes:
    return to_bytes(make_instance(
        rows=8, columns=8, ReferencedImageSequence=[_item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID="1.2.4")],
        ImageType=["ORIGINAL", "PRIMARY"], PixelSpacing=[0.5, 0.5], RedPaletteColorLookupTableData=bytes(2000),
    ))


def _with_length_field(data: bytes, tag: int, length: int) -> bytes:
    start, length_at, value_at = element_offsets(data)[tag]
    field = struct.pack("<L" if value_at - start == 12 else "<H", length & (0xFFFFFFFF if value_at - start == 12 else 0xFFFF))
    return data[:length_at] + field + data[length_at + len(field):]


def _malformed() -> dict[str, bytes]:
    data = _base()
    cases: dict[str, bytes] = {}
    for tag, (start, length_at, value_at) in element_offsets(data).items():
        (length,) = struct.unpack_from("<L" if value_at - start == 12 else "<H", data, length_at)
        cases[f"{tag:08X} cut in its header"] = data[: start + 3]
        cases[f"{tag:08X} cut after its header"] = data[:value_at]
        cases[f"{tag:08X} cut in its value"] = data[: value_at + length // 2]
        cases[f"{tag:08X} odd length"] = _with_length_field(data, tag, length + 1)
        cases[f"{tag:08X} length - 1"] = _with_length_field(data, tag, max(length - 1, 0))
        cases[f"{tag:08X} length past the end"] = _with_length_field(data, tag, len(data))
        cases[f"{tag:08X} length 0xFFFF"] = _with_length_field(data, tag, 0xFFFF)
        cases[f"{tag:08X} undefined length"] = _with_length_field(data, tag, 0xFFFFFFFF)
        cases[f"{tag:08X} VR 'XX'"] = data[: start + 4] + b"XX" + data[start + 6:]
        cases[f"{tag:08X} VR of the other length size"] = data[: start + 4] + (b"OB" if value_at - start == 8 else b"CS") + data[start + 6:]
    rng = random.Random(13)
    end = element_offsets(data)[0x7FE00010][0] + 12
    for n in range(300):  # random damage to the header: flipped bytes, cuts, inserted bytes
        position = rng.randrange(132, end)
        kind = n % 3
        if kind == 0:
            cases[f"random byte {n}"] = data[:position] + bytes([rng.randrange(256)]) + data[position + 1:]
        elif kind == 1:
            cases[f"random cut {n}"] = data[:position]
        else:
            cases[f"random insert {n}"] = data[:position] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5))) + data[position:]
    cases["only the preamble"] = data[:132]
    cases["no DICM"] = b"\x00" * 128 + b"DICX" + data[132:]
    cases["not DICOM"] = b"hello"
    return cases


def test_malformed_headers_give_the_same_outcome():
    cases = _malformed()
    taken = sum(assert_same(data) for data in cases.values())
    identified = sum(assert_same_identity(data) for data in cases.values())
    assert taken > 50 and identified > 50  # rejections by the fast path (Pixel Data checks, UIDs) are compared too


def test_the_comparison_catches_a_difference(monkeypatch):
    """This test module fails when the fast path diverges (here: DS converted wrongly)."""
    data = TAKEN["numbers"]()
    original = header.Converter.numbers

    def wrong(vr, values, kind):
        converted = original(vr, values, kind)
        if vr == "DS":
            converted["Value"] = [v + 1 for v in converted["Value"]]
        return converted

    monkeypatch.setattr(header.Converter, "numbers", staticmethod(wrong))
    with pytest.raises(AssertionError):
        assert_same(data)


# -- generated values -------------------------------------------------------------------------


#: Characters that matter to some VR's rules: padding, delimiters, digits, signs, letters, others.
_ALPHABET = " \\\x00=^.-+eE0123456789AZaz_:\n\r\t/\x01\x7fé山"
_GENERATED_TEXT_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
_BINARY_VRS = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "UV": 8, "SV": 8, "AT": 4, "OB": 1, "OW": 2}
_CHARSETS = ["", "ISO_IR 100", "ISO_IR 192"]
#: Characters of mostly valid values per VR, so that many instances are all valid (the fast path's case).
_NEAR = {
    "AE": " AZaz09\\", "AS": "0123DWMY", "CS": " AZ09_\\", "DA": "0123456789-\\ ", "DS": " 0123456789.+-eE\\",
    "DT": "0123456789.+-\\ ", "IS": " 0123456789+-\\", "TM": "0123456789.-\\ ", "UI": "0123456789.\\\x00 ",
    "PN": "AZaz^= \\é", "UR": "az:/?#=&% ",
}


@st.composite
def _private_element(draw, number: int) -> bytes:
    tag = 0x00091000 | number
    vr = draw(st.sampled_from(_GENERATED_TEXT_VRS + list(_BINARY_VRS)))
    if vr in _BINARY_VRS:
        size = _BINARY_VRS[vr]
        value = draw(st.binary(max_size=4 * size).map(lambda b: b[: len(b) // size * size]))
        if draw(st.integers(0, 9)) == 0:
            value += b"\x00"  # a length that is no multiple of the value size
    else:
        alphabet = draw(st.sampled_from([_ALPHABET] + [_NEAR.get(vr, _ALPHABET)] * 3))
        text = draw(st.sampled_from(["", " ", "  "])) + draw(st.text(alphabet=alphabet, max_size=20))
        value = text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), errors="replace")
    if len(value) % 2:
        value += draw(st.sampled_from([b" ", b"\x00"]))
    return explicit_element(tag, vr, value)


_BASE_INSTANCES: dict[str, bytes] = {}


def _base_instance(charset: str) -> bytes:
    if charset not in _BASE_INSTANCES:
        _BASE_INSTANCES[charset] = to_bytes(make_instance(SpecificCharacterSet=charset) if charset else make_instance())
    return _BASE_INSTANCES[charset]


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(charset=st.sampled_from(_CHARSETS), count=st.integers(1, 3), data=st.data())
def test_generated_values_give_the_same_outcome(charset, count, data):
    """Values of every text and number VR made of the characters their rules care about."""
    elements = b"".join(data.draw(_private_element(n + 1)) for n in range(count))
    assert_same(with_element_before(_base_instance(charset), PATIENT_NAME, explicit_element(0x00090010, "LO", b"FUZZ") + elements))
