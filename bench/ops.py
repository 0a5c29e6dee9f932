"""The operations measured, how each is asked of each server, and how an answer is checked.

Paths are relative to the DICOMweb root (`/v2` for dicomserver, `/dicom-web` for
Orthanc) and drawn at random, with a fixed seed, from the generated data, so both
servers get the same requests in the same order.

Before any GET is timed, one answer per operation and server is fetched and checked
against what was generated (the exact file bytes, the frame's pixels, the set of
studies a query must match); a wrong or missing answer stops the run.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
import requests

from .generate import DataSet
from .load import BenchmarkError

DICOM_JSON = "application/dicom+json"
#: The Accept of a whole study / series / instance in any stored syntax (PS3.18 8.7.3.5).
MULTIPART_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: The Accept of frames as stored (PS3.18 8.7.3.5.2).
MULTIPART_FRAMES_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PATHS_PER_OPERATION = 1000
QIDO_LIMIT = 100  # dicomserver's default page; expected matches are kept below it


@dataclass(frozen=True)
class Metric:
    key: str  # field of a result record
    unit: str
    higher_is_better: bool


INSTANCES_PER_S = Metric("instances_per_s", "instances/s", True)
REQUESTS_PER_S = Metric("rps", "req/s", True)
P50_MS = Metric("p50_ms", "p50 ms", False)


@dataclass(frozen=True)
class Target:
    """A ratio the report checks at the highest concurrency, and the issue that asked for it."""
    ratio: float
    issue: int


@dataclass(frozen=True)
class StowOp:
    key: str
    label: str
    per_request: int
    target: Target | None  # the issue's ratio target at concurrency 4
    metric: Metric = INSTANCES_PER_S


@dataclass(frozen=True)
class GetOp:
    key: str
    label: str
    metric: Metric
    target: Target | None
    #: Accept per server name; "default" for any other server (standard DICOMweb).
    accept: dict[str, str]
    #: Random valid paths (relative to the DICOMweb root) for this data set.
    paths: Callable[[DataSet, random.Random], list[str]]
    #: Raises BenchmarkError unless the answer to path is right.
    check: Callable[[requests.Response, DataSet, str], None]
    note: str = ""
    #: Draw the paths as this operation does (the same requests, e.g. multipart beside single part).
    same_paths_as: str | None = None

    def accept_for(self, server: str) -> str:
        return self.accept.get(server, self.accept["default"])


STOW_OPS = [
    StowOp("stow-1", "STOW, 1 instance per request", 1, Target(1.5, 13)),
    StowOp("stow-10", "STOW, 10 instances per request", 10, Target(1.5, 13)),
]
#: The same files by DIMSE C-STORE (issue 16): DCMTK's storescu into `dicomserver dimse` and into
#: Orthanc's DICOM listener, one instance per C-STORE request, one association per client.
DIMSE_OP = StowOp("dimse-store", "DIMSE C-STORE (storescu)", 1, None)


# -- paths ---------------------------------------------------------------------------------

def _instance_path(study, series, sop) -> str:
    return f"/studies/{study.uid}/series/{series.uid}/instances/{sop}"


def _random_instances(data: DataSet, rng: random.Random) -> list:
    everything = data.instances()
    return [rng.choice(everything) for _ in range(PATHS_PER_OPERATION)]


def _instance_paths(data, rng):
    return [_instance_path(st, se, sop) for st, se, sop, _ in _random_instances(data, rng)]


def _frame_paths(data, rng):
    return [_instance_path(st, se, sop) + "/frames/1" for st, se, sop, _ in _random_instances(data, rng)]


def _study_paths(data, rng, suffix=""):
    return [f"/studies/{rng.choice(data.studies).uid}{suffix}" for _ in range(PATHS_PER_OPERATION)]


def _patient_id_paths(data, rng):
    return [f"/studies?PatientID={rng.choice(data.studies).patient_id}" for _ in range(PATHS_PER_OPERATION)]


def _name_prefixes(data: DataSet) -> list[str]:
    """'SMI*'-style prefixes of family names, each matching fewer studies than one QIDO page."""
    prefixes = set()
    for study in data.studies:
        family = study.patient_name.split("^")[0]
        for length in (3, len(family)):
            prefix = family[:length]
            if len(expected_name_matches(data, prefix)) < QIDO_LIMIT:
                prefixes.add(prefix)
                break
    return sorted(prefixes)


def expected_name_matches(data: DataSet, prefix: str) -> set[str]:
    return {s.uid for s in data.studies if s.patient_name.upper().startswith(prefix.upper())}


def _patient_name_paths(data, rng):
    # The `*` is sent as is: Orthanc 1.10 does not decode %2A.
    prefixes = _name_prefixes(data)
    if not prefixes:
        raise BenchmarkError("no PatientName prefix matches fewer than one QIDO page of studies")
    return [f"/studies?PatientName={rng.choice(prefixes)}*" for _ in range(PATHS_PER_OPERATION)]


def _date_window_days(data: DataSet) -> int:
    """About 10 studies per window, whatever N is."""
    dates = sorted(dt.datetime.strptime(s.study_date, "%Y%m%d").date() for s in data.studies)
    span = (dates[-1] - dates[0]).days + 1
    return max(30, min(span, span * 10 // max(1, len(dates))))


def _date_paths(data, rng):
    window = _date_window_days(data)
    dates = [dt.datetime.strptime(s.study_date, "%Y%m%d").date() for s in data.studies]
    first, last = min(dates), max(dates)
    paths = []
    for _ in range(PATHS_PER_OPERATION * 20):
        if len(paths) == PATHS_PER_OPERATION:
            return paths
        start = first + dt.timedelta(days=rng.randrange(max(1, (last - first).days - window + 2)))
        end = start + dt.timedelta(days=window - 1)
        if len(expected_date_matches(data, start, end)) < QIDO_LIMIT:
            paths.append(f"/studies?StudyDate={start:%Y%m%d}-{end:%Y%m%d}")
    raise BenchmarkError(f"too few {window}-day StudyDate windows match fewer than {QIDO_LIMIT} studies")


def expected_date_matches(data: DataSet, start: dt.date, end: dt.date) -> set[str]:
    low, high = f"{start:%Y%m%d}", f"{end:%Y%m%d}"
    return {s.uid for s in data.studies if low <= s.study_date <= high}


def _instances_limit_paths(data, rng):
    return [f"/instances?limit={QIDO_LIMIT}"]


# -- checks --------------------------------------------------------------------------------

def _fail(path: str, response: requests.Response, why: str) -> None:
    raise BenchmarkError(
        f"GET {path}: {why} (HTTP {response.status_code}, Content-Type {response.headers.get('Content-Type')}, "
        f"{len(response.content)} bytes)\n{response.content[:500]!r}"
    )


def _ok(response: requests.Response, path: str) -> None:
    if response.status_code != 200:
        _fail(path, response, "not 200")


def _find(data: DataSet, path: str):
    """(study, series, sop, file) named in a WADO path."""
    parts = path.split("?")[0].strip("/").split("/")
    study = next(s for s in data.studies if s.uid == parts[1])
    if len(parts) < 6:
        return study, None, None, None
    for st, se, sop, f in data.instances():
        if sop == parts[5]:
            return st, se, sop, f
    raise KeyError(path)


def multipart_parts(response: requests.Response) -> list[bytes]:
    """The part bodies of a multipart/related answer (its boundary from Content-Type)."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers.get("Content-Type", ""))
    if not response.headers.get("Content-Type", "").startswith("multipart/related") or not match:
        return []
    delimiter = b"\r\n--" + match.group(1).encode()
    body = b"\r\n" + response.content  # the first delimiter needs no CRLF before it
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        return []
    parts = []
    for chunk in chunks[1:-1]:
        _head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            return []
        parts.append(content)
    return parts


def _check_instance_multipart(response, data, path):
    _ok(response, path)
    *_, file = _find(data, path)
    parts = multipart_parts(response)
    if len(parts) != 1:
        _fail(path, response, f"expected multipart/related with one part, got {len(parts)} parts")
    if parts[0] != file.read_bytes():
        _fail(path, response, "the part is not the stored file")


def _check_instance(response, data, path):
    _ok(response, path)
    *_, file = _find(data, path)
    stored = file.read_bytes()
    if stored not in response.content or len(response.content) > len(stored) + 4096:
        _fail(path, response, "the body is not the stored file (in at most 4 KB of framing)")


def _check_study(response, data, path):
    _ok(response, path)
    study = _find(data, path)[0]
    files = [data.directory / rel for series in study.series for rel in series.files]
    body = response.content
    if not all(f.read_bytes() in body for f in files):
        _fail(path, response, f"not all {len(files)} stored files of the study are in the body")
    if len(body) > sum(f.stat().st_size for f in files) + 4096 * len(files):
        _fail(path, response, "the body is larger than the study's files and their framing")


def _check_frame(response, data, path):
    _ok(response, path)
    *_, file = _find(data, path)
    pixels = pydicom.dcmread(file).PixelData
    if pixels not in response.content or len(response.content) > len(pixels) + 4096:
        _fail(path, response, "the body is not the first frame's pixel data")


def _json(response, path):
    _ok(response, path)
    try:
        return response.json()
    except ValueError:
        _fail(path, response, "not JSON")


def _uids(documents: list, tag: str) -> set[str]:
    return {d.get(tag, {}).get("Value", [None])[0] for d in documents}


def _check_metadata(response, data, path):
    documents = _json(response, path)
    study = _find(data, path)[0]
    expected = {sop for series in study.series for sop in series.instances}
    if _uids(documents, "00080018") != expected:
        _fail(path, response, f"metadata does not list the study's {len(expected)} instances")
    if not all("7FE00010" in d for d in documents):
        _fail(path, response, "Pixel Data (as a BulkDataURI) missing from some instances")


def _check_query(expected: Callable[[DataSet, dict[str, str]], set[str]]):
    def check(response, data, path):
        documents = _json(response, path)
        query = dict(p.split("=", 1) for p in path.split("?", 1)[1].split("&"))
        want = expected(data, query)
        got = _uids(documents, "0020000D")
        if got != want:
            _fail(path, response, f"matched {len(got)} studies, expected {len(want)}")

    return check


def _by_patient_id(data, query):
    return {s.uid for s in data.studies if s.patient_id == query["PatientID"]}


def _by_name(data, query):
    return expected_name_matches(data, query["PatientName"].rstrip("*"))


def _by_date(data, query):
    low, high = query["StudyDate"].split("-")
    return {s.uid for s in data.studies if low <= s.study_date <= high}


def _check_instances_page(response, data, path):
    documents = _json(response, path)
    if len(documents) != min(QIDO_LIMIT, data.n) or len(_uids(documents, "00080018")) != len(documents):
        _fail(path, response, f"expected {min(QIDO_LIMIT, data.n)} distinct instances")


GET_OPS = [
    GetOp(
        "wado-instance", "WADO instance", REQUESTS_PER_S, Target(5.0, 5),
        # dicomserver sends one instance as a single part (PS3.18 8.7.3.5.1); Orthanc 1.10 +
        # DICOMweb 1.7 answers 400 to that and only frames it as multipart/related.
        {"dicomserver": "application/dicom; transfer-syntax=*", "default": MULTIPART_DICOM_ANY},
        _instance_paths, _check_instance,
        note="dicomserver: single part `application/dicom; transfer-syntax=*`; Orthanc: "
             "`multipart/related; type=\"application/dicom\"; transfer-syntax=*` (its DICOMweb 1.7 "
             "answers 400 to single-part). Same bytes plus ~230 B of multipart framing.",
    ),
    GetOp(
        "wado-instance-multipart", "WADO instance, multipart", REQUESTS_PER_S, Target(1.5, 13),
        {"default": MULTIPART_DICOM_ANY}, _instance_paths, _check_instance_multipart,
        note="Both asked for `multipart/related; type=\"application/dicom\"; transfer-syntax=*`, the "
             "same paths as WADO instance; the answer must be one part holding exactly the stored file. "
             "dicomserver's multipart/single-part ratio is in the targets section.",
        same_paths_as="wado-instance",
    ),
    GetOp(
        "wado-study", "WADO study (25 instances, multipart)", REQUESTS_PER_S, None,
        {"default": MULTIPART_DICOM_ANY}, _study_paths, _check_study,
    ),
    GetOp(
        "frames", "WADO frames/1", REQUESTS_PER_S, Target(5.0, 5),
        {"default": MULTIPART_FRAMES_ANY}, _frame_paths, _check_frame,
        note="Both asked for `multipart/related; type=\"application/octet-stream\"; transfer-syntax=*`; "
             "Orthanc answers with the transfer syntax inside the `type` parameter, both send the "
             "stored 512 KB frame unchanged.",
    ),
    GetOp(
        "metadata", "study /metadata (25 instances)", REQUESTS_PER_S, Target(10.0, 5),
        {"default": DICOM_JSON}, lambda d, r: _study_paths(d, r, "/metadata"), _check_metadata,
    ),
    GetOp(
        "qido-patientid", "QIDO studies?PatientID=", P50_MS, Target(5.0, 5),
        {"default": DICOM_JSON}, _patient_id_paths, _check_query(_by_patient_id),
    ),
    GetOp(
        "qido-patientname", "QIDO studies?PatientName=ABC*", P50_MS, Target(5.0, 5),
        {"default": DICOM_JSON}, _patient_name_paths, _check_query(_by_name),
    ),
    GetOp(
        "qido-studydate", "QIDO studies?StudyDate=range", P50_MS, Target(5.0, 5),
        {"default": DICOM_JSON}, _date_paths, _check_query(_by_date),
    ),
    GetOp(
        "qido-instances", "QIDO instances?limit=100", P50_MS, Target(20.0, 5),
        {"default": DICOM_JSON}, _instances_limit_paths, _check_instances_page,
    ),
]

#: nginx is measured on this operation only, with the same instances as plain files.
CEILING_OP = "wado-instance"


def nginx_paths(data: DataSet, rng: random.Random) -> list[str]:
    return ["/" + str(f.relative_to(data.directory)) for *_, f in _random_instances(data, rng)]


def paths_for(op: GetOp, data: DataSet, seed: int) -> list[str]:
    """The same random paths for every server and round (seeded by the operation's name)."""
    return op.paths(data, random.Random(f"{seed}/{op.same_paths_as or op.key}"))


def validate(op: GetOp, server, data: DataSet, path: str) -> dict:
    """Fetch path from server once with the operation's Accept and check the answer."""
    url = server.origin + server.base_path + path
    response = requests.get(url, headers={"Accept": op.accept_for(server.name)}, timeout=300)
    op.check(response, data, path)
    headers = response.headers
    return {
        "status": response.status_code,
        "bytes": len(response.content),
        "content_type": headers.get("Content-Type", "").split(";")[0],
        # The body ends when the server closes the connection: a new connection per request.
        "close_delimited": "content-length" not in headers and "chunked" not in headers.get("Transfer-Encoding", "")
                           and headers.get("Connection", "").lower() == "close",
    }


# -- dicomserver behind nginx (X-Accel-Redirect) -------------------------------------------

#: The Accept of WADO instance through nginx: single part, as stored (dicomserver's own row's).
PROXY_ACCEPT = "application/dicom; transfer-syntax=*"
PROXY_OP = "wado-instance-nginx"


def check_proxied_instance(response: requests.Response, data: DataSet, path: str) -> str | None:
    """Why the answer through nginx is not an X-Accel answer of the stored file, or None if it is."""
    *_, file = _find(data, path)
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    if response.content != file.read_bytes():
        return f"the body ({len(response.content)} bytes) is not the stored file"
    if response.headers.get("X-Bench-Accel") != "1":
        return "dicomserver sent the bytes itself: no X-Accel-Redirect answer"
    return None


# -- the big study ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BigOp:
    """One /metadata request of the big study, with or without Accept-Encoding: gzip."""
    key: str
    label: str
    level: str  # "study" or "series" (the first, biggest series)
    gzip: bool

    def path(self, data: DataSet) -> str:
        study = data.studies[0]
        if self.level == "study":
            return f"/studies/{study.uid}/metadata"
        return f"/studies/{study.uid}/series/{study.series[0].uid}/metadata"

    def headers(self) -> dict[str, str]:
        # Said either way: requests (the answer check) asks for gzip unless told otherwise.
        return {"Accept": DICOM_JSON, "Accept-Encoding": "gzip" if self.gzip else "identity"}

    def expected(self, data: DataSet) -> list[str]:
        study = data.studies[0]
        series = study.series if self.level == "study" else study.series[:1]
        return [sop for s in series for sop in s.instances]


BIG_OPS = [
    BigOp("big-study-metadata", "big study /metadata", "study", False),
    BigOp("big-study-metadata-gzip", "big study /metadata, gzip", "study", True),
    BigOp("big-series-metadata", "big series /metadata", "series", False),
    BigOp("big-series-metadata-gzip", "big series /metadata, gzip", "series", True),
]
#: The issue 13 targets of the big study's /metadata (both levels, both encodings).
BIG_TARGET = Target(20.0, 13)
BIG_P50_LIMIT_MS = 150.0
BIG_RSS_GROWTH_LIMIT_MB = 50.0


def fetch_big(op: BigOp, server, data: DataSet) -> dict:
    """One answer of op from server, checked: every instance of the study or series once, with its
    SOP Instance UID, gunzipped first when the answer says Content-Encoding: gzip."""
    path = op.path(data)
    response = requests.get(server.origin + server.base_path + path, headers=op.headers(), timeout=600,
                            stream=True)
    raw = response.raw.read(decode_content=False)
    response._content = raw  # for _fail's message
    if response.status_code != 200:
        _fail(path, response, "not 200")
    encoding = response.headers.get("Content-Encoding", "").lower()
    try:
        body = gzip.decompress(raw) if encoding == "gzip" else raw
        documents = json.loads(body)
    except (OSError, ValueError) as exc:
        _fail(path, response, f"not {'gzipped ' if encoding == 'gzip' else ''}JSON ({exc})")
    want = op.expected(data)
    got = [d.get("00080018", {}).get("Value", [None])[0] for d in documents]
    if len(got) != len(want) or set(got) != set(want):
        _fail(path, response, f"{len(got)} objects ({len(set(got) & set(want))} of the expected SOP Instance "
                              f"UIDs), expected the {len(want)} instances")
    return {"status": 200, "bytes": len(raw), "json_bytes": len(body), "content_encoding": encoding or None,
            "objects": len(documents)}
