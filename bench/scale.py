"""Scale check: QIDO latency with 10k, 100k and 1M instances in the index (issue 5, item 5).

Fills an index (SQLite or PostgreSQL) with instance rows built by the same code as
STOW (`Ingestor.prepare` → `Prepared.record` → `Index.store_many`), in batches and
without writing blobs, so a million rows take minutes, not hours. To keep that
possible, `--templates` distinct files (default 500) go through the full STOW
parse; each row is then a template's DICOM JSON with its own study/series/SOP UIDs,
patient, accession number, date and modality (25 instances per study, 3 series).

At every checkpoint it measures, through the Flask test client (so routing, query
parsing, SQL and JSON output all count, HTTP does not), the p50/p95 of:
study QIDO by PatientID, by PatientName wildcard, by StudyDate range, and
`/instances?limit=100`; and the index size per instance.

    python -m bench.scale --sizes 10000,100000,1000000                # SQLite in a temp dir
    python -m bench.scale --database postgresql://...  --sizes 10000  # an existing PostgreSQL
    python -m bench.scale --postgres --sizes 10000,100000              # a throw-away PostgreSQL

Two runs can load side by side (e.g. SQLite and PostgreSQL, to halve the wall time)
without measuring each other's loading: give both the same `--measure-lock FILE`;
a run measures holding it exclusively, and loads a batch only when nobody measures.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import fcntl
import io
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from dicomserver import Settings, create_app  # noqa: E402

INSTANCES_PER_STUDY = 25
SERIES_PER_STUDY = 3
MODALITIES = ("CT", "CT", "CT", "MR", "MR", "PT")
FAMILY = "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS WILSON TAYLOR MOORE WHITE".split()
GIVEN = "JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA".split()
ROOT = "2.25.1"  # UIDs below: ROOT.<kind>.<number>


def template_file(rng: random.Random, number: int) -> bytes:
    """A CT-like Part 10 file with a realistic header (pixel data kept tiny)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.9.{number}"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"{ROOT}.9.{number}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
    ds.AccessionNumber = "A0"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 2.5MM"
    ds.ManufacturerModelName = "Scanner 3000"
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "P0"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = rng.choice(["F", "M"])
    ds.PatientAge = "050Y"
    ds.SliceThickness = "2.5"
    ds.KVP = "120"
    ds.StudyInstanceUID = f"{ROOT}.1.0"
    ds.SeriesInstanceUID = f"{ROOT}.2.0"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number % INSTANCES_PER_STUDY + 1
    ds.ImagePositionPatient = [-250.0, -250.0, float(-number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = f"{ROOT}.3.{number}"
    ds.SliceLocation = str(-number)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = np.zeros((8, 8), dtype=np.int16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _set(meta: dict, key: str, vr: str, value) -> None:
    meta[key] = {"vr": vr, "Value": [value]}


def replicate(prepared, number: int, rng: random.Random):
    """Template `prepared` as instance `number`: own UIDs, patient, study attributes."""
    study = number // INSTANCES_PER_STUDY
    series = study * SERIES_PER_STUDY + (number % INSTANCES_PER_STUDY) % SERIES_PER_STUDY
    study_uid, series_uid, sop_uid = f"{ROOT}.1.{study}", f"{ROOT}.2.{series}", f"{ROOT}.4.{number}"
    study_rng = random.Random(study)  # every instance of a study agrees on its attributes
    meta = copy.copy(prepared.metadata)
    _set(meta, "0020000D", "UI", study_uid)
    _set(meta, "0020000E", "UI", series_uid)
    _set(meta, "00080018", "UI", sop_uid)
    _set(meta, "00100010", "PN", {"Alphabetic": f"{study_rng.choice(FAMILY)}^{study_rng.choice(GIVEN)}^{study % 97}"})
    _set(meta, "00100020", "LO", f"P{study // 2:07d}")
    _set(meta, "00080050", "SH", f"A{study:08d}")
    date = dt.date(2010, 1, 1) + dt.timedelta(days=study_rng.randrange(15 * 365))
    _set(meta, "00080020", "DA", date.strftime("%Y%m%d"))
    _set(meta, "00080060", "CS", MODALITIES[series % len(MODALITIES)])
    _set(meta, "00200011", "IS", series % SERIES_PER_STUDY + 1)
    _set(meta, "00200013", "IS", number % INSTANCES_PER_STUDY + 1)
    path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    meta["7FE00010"] = dict(meta["7FE00010"], BulkDataURI=f"\x01{path}/bulkdata/7FE00010")
    result = copy.copy(prepared.result)
    result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid = study_uid, series_uid, sop_uid
    row = copy.copy(prepared)
    row.result, row.metadata = result, meta
    return row.record(f"{study_uid}/{series_uid}/{sop_uid}/0-scale.dcm", 527_000, None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(client, loaded: int, rng: random.Random, repeats: int) -> dict[str, tuple[float, float]]:
    studies = max(1, loaded // INSTANCES_PER_STUDY)
    queries = {
        "QIDO studies by PatientID": lambda: f"/v2/studies?PatientID=P{rng.randrange(studies) // 2:07d}",
        "QIDO studies by PatientName wildcard": lambda: f"/v2/studies?PatientName={rng.choice(FAMILY)[:3]}*&limit=100",
        "QIDO studies by StudyDate range": lambda: "/v2/studies?StudyDate={}-{}&limit=100".format(
            *sorted(
                (dt.date(2010, 1, 1) + dt.timedelta(days=rng.randrange(15 * 365))).strftime("%Y%m%d") for _ in range(2)
            )
        ),
        "QIDO /instances?limit=100": lambda: f"/v2/instances?limit=100&offset={rng.randrange(max(1, loaded - 100))}",
    }
    figures = {}
    for name, make_url in queries.items():
        client.get(make_url())  # warm
        times = []
        for _ in range(repeats):
            url = make_url()
            start = time.perf_counter()
            response = client.get(url, headers={"Accept": "application/dicom+json"})
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (url, response.status_code, response.data[:200])
        figures[name] = (statistics.median(times), percentile(times, 0.95))
    return figures


def index_bytes(database_url: str) -> int:
    if database_url.startswith("sqlite"):
        path = Path(database_url[len("sqlite:///"):])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    import psycopg2

    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return cursor.fetchone()[0]


@contextlib.contextmanager
def _lock(path: str | None, mode: int):
    """flock `path` (shared while loading a batch, exclusive while measuring); no-op without a path."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(
    database_url: str, sizes: list[int], templates: int, batch: int, repeats: int, measure_lock: str | None = None
) -> list[dict]:
    work = tempfile.mkdtemp(prefix="dicomserver-scale-")
    app = create_app(Settings(blobstore_url=os.path.join(work, "blobs"), database_url=database_url))
    state = app.extensions["dicomserver"]
    rng = random.Random(20261122)
    prepared = []
    for number in range(templates):
        data = template_file(rng, number)
        prepared.append(state.ingestor.prepare(io.BytesIO(data), len(data), study_uid=None))
    client = app.test_client()
    state.index.connect()
    # An index of an earlier run (--database) is continued, not loaded again: 1M rows take 20 minutes.
    loaded = state.index.stored_counts()[1]
    state.index.close()
    if loaded:
        print(f"{loaded} rows already in the index", file=sys.stderr)
    empty = 0 if loaded else index_bytes(database_url)  # (the schema's own pages are noise at these sizes)
    rows, started = [], time.perf_counter()
    for size in sorted(sizes):
        while loaded < size:
            count = min(batch, size - loaded)
            records = [replicate(prepared[(loaded + i) % templates], loaded + i, rng) for i in range(count)]
            with _lock(measure_lock, fcntl.LOCK_SH):
                state.index.connect()
                try:
                    failed = [o for o in state.index.store_many(records) if isinstance(o, Exception)]
                    if failed:
                        raise RuntimeError(f"{len(failed)} of {len(records)} rows were not stored: {failed[0]!r}")
                finally:
                    state.index.close()
            loaded += count
            print(f"\r{loaded:>9} rows loaded ({time.perf_counter() - started:.0f} s)", end="", file=sys.stderr)
        print(file=sys.stderr)
        with _lock(measure_lock, fcntl.LOCK_EX):
            figures = measure(client, loaded, rng, repeats)
        size_bytes = index_bytes(database_url) - empty
        rows.append({"instances": loaded, "bytes_per_instance": size_bytes / loaded, "figures": figures,
                     "load_seconds": time.perf_counter() - started})
        for name, (p50, p95) in figures.items():
            print(f"{loaded:>9}  {name:<40} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms", file=sys.stderr)
    state.index.shutdown()
    return rows


def markdown(results: dict[str, list[dict]], command: str) -> str:
    lines = [
        "# Scale check: QIDO with a large index",
        "",
        "Generated by `bench/scale.py` (see its docstring for the method): rows built by STOW's own",
        "record code, bulk-inserted without blobs; latencies measured in-process through the Flask",
        "test client (routing, parsing, SQL, JSON), 25 instances per study. Target: p95 < 20 ms at",
        "1M instances for the study-level queries.",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "",
    ]
    for database, rows in results.items():
        lines += [
            f"## {database}",
            "",
            "| instances | index bytes/instance | query | p50 ms | p95 ms |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            for name, (p50, p95) in row["figures"].items():
                lines.append(
                    f"| {row['instances']:,} | {row['bytes_per_instance']:,.0f} | {name} | {p50:.2f} | {p95:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--database", help="an index URL; default: SQLite in a temp dir")
    parser.add_argument("--postgres", action="store_true", help="also run on a throw-away PostgreSQL")
    parser.add_argument("--templates", type=int, default=500)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--measure-lock", help="a file that runs sharing the machine lock (see above)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, list[dict]] = {}
    sqlite_url = args.database or f"sqlite:///{tempfile.mkdtemp(prefix='dicomserver-scale-db-')}/index.db"
    results["SQLite" if sqlite_url.startswith("sqlite") else "PostgreSQL"] = run(
        sqlite_url, sizes, args.templates, args.batch, args.repeats, args.measure_lock
    )
    if args.postgres:
        from pg_fixtures import start_postgres, stop_postgres

        server = start_postgres()
        try:
            results["PostgreSQL"] = run(
                server.url(), sizes, args.templates, args.batch, args.repeats, args.measure_lock
            )
        finally:
            stop_postgres(server)
    report = markdown(results, "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
