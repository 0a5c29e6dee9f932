"""The benchmark's report and answer checks, without servers: bench/report.py renders two data
sizes side by side from a synthetic list of records (with the DIMSE C-STORE rows, and merged
into an earlier run's by --update), and bench/ops.py's checks of the new rows (multipart WADO
instance, the X-Accel answer through nginx, the big study's /metadata) accept the right
answers and refuse wrong ones.
"""
from __future__ import annotations

import gzip
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench import generate, ops, report, run, servers
from bench.load import BenchmarkError

SIZES = (500, 3000)
LABELS = {"dicomserver": "dicomserver", "orthanc": "Orthanc", "nginx": "nginx",
          "dicomserver-nginx": "dicomserver behind nginx (X-Accel)", "dicomserver-import": "dicomserver import"}


def _record(n, rnd, server, op, conc, **fields):
    base = {"n": n, "round": rnd, "server": server, "op": op, "concurrency": conc, "requests": 100,
            "seconds": 5.0, "client_cpu_s": 0.5, "server_cpu_s": 1.0, "server_peak_rss": 100e6,
            "server_peak_pss": 80e6, "other_cpu_s": 0.0, "mb_per_s": 1.0, "p50_ms": 1.0, "p95_ms": 2.0,
            "bytes_per_response": 1000}
    return {**base, **fields}


def _records(with_proxy: bool = True) -> list[dict]:
    """Two rounds at each size; dicomserver's figures are k times Orthanc's, k depending on the size."""
    records = []
    for n in SIZES:
        k = 2.0 if n == 500 else 1.2
        for rnd in (0, 1):
            for conc in (1, 4):
                records += [
                    _record(n, rnd, "dicomserver", "stow-10", conc, instances_per_s=100 * k, instances=n),
                    _record(n, rnd, "orthanc", "stow-10", conc, instances_per_s=100.0, instances=n),
                    _record(n, rnd, "dicomserver", "wado-instance", conc, rps=1000.0),
                    _record(n, rnd, "orthanc", "wado-instance", conc, rps=1000 / k),
                    _record(n, rnd, "dicomserver", "wado-instance-multipart", conc, rps=950.0),
                    _record(n, rnd, "orthanc", "wado-instance-multipart", conc, rps=1000 / k),
                    _record(n, rnd, "dicomserver", "qido-patientid", conc, p50_ms=1.0, rps=900.0),
                    _record(n, rnd, "orthanc", "qido-patientid", conc, p50_ms=10.0, rps=90.0),
                    _record(n, rnd, "nginx", "wado-instance", conc, rps=4000.0),
                ]
                if with_proxy:
                    records.append(_record(n, rnd, "dicomserver-nginx", ops.PROXY_OP, conc, rps=2400.0))
            records += [
                _record(n, rnd, "dicomserver", "big-study-metadata", 4, p50_ms=100.0, rps=30.0, rss_growth=10e6),
                _record(n, rnd, "dicomserver", "big-study-metadata-gzip", 4, p50_ms=120.0, rps=25.0,
                        rss_growth=60e6),
                _record(n, rnd, "orthanc", "big-study-metadata", 4, p50_ms=4000.0, rps=1.0, rss_growth=1e6),
                _record(n, rnd, "dicomserver-import", "import", None, instances=n, instances_per_s=350 * k,
                        command_seconds=n / (400 * k)),
            ]
    return records


def _info(**overrides) -> dict:
    info = {
        "sizes": list(SIZES), "n": SIZES[-1], "studies": 120, "data_mb": 1576.0,
        "data": {str(n): {"n": n, "studies": n // 25, "data_mb": n * 0.525} for n in SIZES},
        "big_study": {"n": 5000, "series": [2000, 2000, 1000], "data_mb": 52.6, "rows": 64},
        "repeat": 2, "duration": 5.0, "warmup": 1.0, "big_duration": 3.0, "concurrency": [1, 4],
        "servers": ["dicomserver", "orthanc"], "labels": LABELS, "date": "2026-12-06 10:00 UTC",
        "command": "make bench", "machine": {"CPU": "2 logical cores, test"}, "versions": {}, "settings": {},
        "validation": {}, "unavailable": {}, "quiet": {},
    }
    return {**info, **overrides}


def _table(markdown: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header cells, rows by first cell) of the first table under heading; the min-max spreads
    of the medians left out ("2.00 (1.90–2.10)x" reads "2.00x")."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[re.sub(r" \([^)]*–[^)]*\)", "", c.strip()) for c in line.strip().strip("|").split("|")]
             for line in lines]
    return cells[0], {row[0]: row for row in cells[2:]}


def test_two_sizes_side_by_side_at_concurrency_4():
    markdown = report.render(_records(), _info())
    header, rows = _table(markdown, "## Concurrency 4\n")
    assert header == ["operation", "metric", "dicomserver N=500", "Orthanc N=500", "ratio N=500",
                      "dicomserver N=3000", "Orthanc N=3000", "ratio N=3000", "target"]
    stow = rows["STOW, 10 instances per request"]
    assert stow[2:8] == ["200", "100", "2.00x", "120", "100", "1.20x"]
    assert stow[8] == ">= 1.5x (issue 13): N=500 met, N=3000 missed"
    assert rows["QIDO studies?PatientID="][4] == "10.0x"  # latency: Orthanc / dicomserver
    assert rows["QIDO studies?PatientID="][8] == ">= 5x (issue 5): met at both sizes"
    # The gzip row is compared with Orthanc's answer without gzip (its compression is off).
    gzip_row = rows["big study /metadata, gzip (Orthanc without gzip)"]
    assert gzip_row[2:5] == ["120", "4,000", "33.3x"]
    importing = rows["dicomserver import against Orthanc's STOW (10 per request)"]
    assert importing[2:8] == ["700", "100", "7.00x", "420", "100", "4.20x"]
    # c=1 has the same columns but no target.
    header1, _ = _table(markdown, "## Concurrency 1\n")
    assert header1 == header[:-1]


def test_targets_of_issue_13():
    markdown = report.render(_records(), _info())
    header, rows = _table(markdown, "## Targets of issue 13")
    assert header == ["target", "N=500", "N=3000"]
    assert rows["WADO instance, multipart: >= 1.5x Orthanc"][1:] == ["1.90x: met", "1.14x: missed"]
    assert rows["WADO instance, multipart: >= 90 % of dicomserver's single-part rate"][1:] == ["95.0 %: met"] * 2
    assert rows["WADO instance behind nginx (X-Accel): >= 50 % of nginx alone"][1:] == ["60.0 %: met"] * 2
    big = "big study /metadata: p50 <= 150 ms, >= 20x Orthanc, RSS growth < 50 MB"
    assert rows[big][1:] == ["100 ms, 40.0x, 10.0 MB: met"] * 2
    big_gzip = "big study /metadata, gzip: p50 <= 150 ms, >= 20x Orthanc, RSS growth < 50 MB"
    assert rows[big_gzip][1] == "120 ms, 33.3x, 60.0 MB: missed"  # too much memory
    assert rows["dicomserver import: >= 3x Orthanc's STOW (10 per request)"][1:] == ["7.00x: met", "4.20x: met"]


def test_proxy_row_says_when_the_mode_is_not_available():
    reason = "X-Accel mode not available in this build (dicomserver sent the bytes itself)"
    markdown = report.render(_records(with_proxy=False), _info(unavailable={ops.PROXY_OP: reason}))
    _, rows = _table(markdown, "## Targets of issue 13")
    assert rows["WADO instance behind nginx (X-Accel): >= 50 % of nginx alone"][1:] == ["not available"] * 2
    assert reason in markdown.split("## WADO instance against nginx", 1)[1]


def test_renders_the_records_of_a_one_size_run_from_before_sizes():
    """--render of an older .json: no "n" in the records, no "sizes" in the info."""
    records = [{k: v for k, v in r.items() if k != "n"} for r in _records() if r["n"] == 3000]
    info = _info()
    for key in ("sizes", "data", "big_study", "unavailable", "big_duration"):
        info.pop(key)
    markdown = report.render(records, info)
    header, rows = _table(markdown, "## Concurrency 4\n")
    assert header[2:5] == ["dicomserver N=3000", "Orthanc N=3000", "ratio N=3000"]
    assert rows["STOW, 10 instances per request"][4] == "1.20x"


# -- answer checks ----------------------------------------------------------------------------

@pytest.fixture
def data(tmp_path) -> generate.DataSet:
    """A planned data set whose files hold distinct arbitrary bytes (the checks only compare bytes)."""
    studies = generate.plan(3)
    dataset = generate.DataSet(tmp_path, 3, generate.DEFAULT_SEED, studies, 0)
    for i, (*_, path) in enumerate(dataset.instances()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM" + bytes([i]) * 3000 + b"\r\n--notaboundary\r\n")
    return dataset


def _response(body: bytes, content_type: str, status: int = 200, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers["Content-Type"] = content_type
    response.headers.update(headers)
    return response


def _multipart(*parts: bytes, boundary: str = "b0und4ry") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", (
        f'multipart/related; type="application/dicom"; boundary={boundary}')


def _instance_path(data):
    study, series, sop, path = data.instances()[0]
    return f"/studies/{study.uid}/series/{series.uid}/instances/{sop}", path


def test_multipart_instance_check(data):
    op = next(o for o in ops.GET_OPS if o.key == "wado-instance-multipart")
    path, file = _instance_path(data)
    stored = file.read_bytes()
    op.check(_response(*_multipart(stored)), data, path)
    with pytest.raises(BenchmarkError, match="one part, got 2"):
        op.check(_response(*_multipart(stored, stored)), data, path)
    with pytest.raises(BenchmarkError, match="not the stored file"):
        op.check(_response(*_multipart(stored[:-1])), data, path)
    with pytest.raises(BenchmarkError, match="one part, got 0"):  # single part is not multipart
        op.check(_response(stored, "application/dicom"), data, path)


def test_proxied_instance_check(data):
    path, file = _instance_path(data)
    stored = file.read_bytes()
    assert ops.check_proxied_instance(_response(stored, "application/dicom", **{"X-Bench-Accel": "1"}),
                                      data, path) is None
    assert "no X-Accel-Redirect" in ops.check_proxied_instance(_response(stored, "application/dicom"), data, path)
    assert "not the stored file" in ops.check_proxied_instance(
        _response(b"", "application/dicom", **{"X-Bench-Accel": "1"}), data, path)
    assert ops.check_proxied_instance(_response(b"", "text/plain", status=404), data, path) == "HTTP 404"


class _Server:
    """A stand-in DICOMweb server answering every GET with one fixed body."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base_path = "/v2"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_big_study_metadata_check(tmp_path):
    study = generate.big_study_plan(10)
    assert [len(s.instances) for s in study.series] == [4, 4, 2]
    big = generate.DataSet(tmp_path, 10, generate.DEFAULT_SEED, [study], 0)
    documents = [{"00080018": {"vr": "UI", "Value": [sop]}} for s in study.series for sop in s.instances]
    study_op = next(o for o in ops.BIG_OPS if o.key == "big-study-metadata-gzip")
    series_op = next(o for o in ops.BIG_OPS if o.key == "big-series-metadata")

    compressed = gzip.compress(json.dumps(documents).encode())
    server = _Server(compressed, {"Content-Type": "application/dicom+json", "Content-Encoding": "gzip"})
    try:
        check = ops.fetch_big(study_op, server, big)
        assert check["objects"] == 10 and check["bytes"] == len(compressed) and check["content_encoding"] == "gzip"
        with pytest.raises(BenchmarkError, match="expected the 4 instances"):  # the whole study, not the series
            ops.fetch_big(series_op, server, big)
    finally:
        server.close()

    server = _Server(json.dumps(documents[:4]).encode(), {"Content-Type": "application/dicom+json"})
    try:
        assert ops.fetch_big(series_op, server, big)["objects"] == 4
        with pytest.raises(BenchmarkError, match="expected the 10 instances"):
            ops.fetch_big(study_op, server, big)
    finally:
        server.close()


# -- DIMSE C-STORE (issue 16) and --update ------------------------------------------------------

def _dimse_records() -> list[dict]:
    """Two rounds at each size: dicomserver stores at 0.5x Orthanc's rate at N=500, 1.5x at N=3000;
    the listeners' RSS is far above the HTTP servers' (it must stay out of "peak RSS, whole run")."""
    records = []
    for n in SIZES:
        k = 0.5 if n == 500 else 1.5
        for rnd in (0, 1):
            for i, conc in enumerate((1, 4)):
                for server, rate in (("dicomserver", 100 * k), ("orthanc", 100.0)):
                    records.append(_record(n, rnd, server, ops.DIMSE_OP.key, conc, instances=n // 2,
                                           instances_per_s=rate, mb_per_s=rate / 2, stored_after=n // 2 * (i + 1),
                                           sent_after=n // 2 * (i + 1), server_peak_rss=900e6, p50_ms=None,
                                           p95_ms=None))
    return records


def test_dimse_store_beside_orthanc():
    markdown = report.render(_records() + _dimse_records(), _info())
    for conc in (1, 4):
        _, rows = _table(markdown, f"## Concurrency {conc}\n")
        row = rows["DIMSE C-STORE (storescu)"]
        assert row[1:8] == ["instances/s", "50.0", "100", "0.50x", "150", "100", "1.50x"]
        assert rows["peak RSS, whole run"][2] == "100"  # the HTTP servers' alone
    assert rows["DIMSE C-STORE (storescu)"][8] == "–"  # no target asked
    header, rows = _table(markdown, "## DIMSE C-STORE")
    assert header[:6] == ["N", "concurrency", "server", "instances/s", "MB/s", "stored / sent (count after the slice)"]
    lines = [line for line in markdown.split("## DIMSE C-STORE", 1)[1].split("\n## ", 1)[0].splitlines()
             if line.startswith("| 3000 | 4 |")]
    cells = [[re.sub(r" \([^)]*–[^)]*\)", "", c) for c in line.split(" | ")[2:6]] for line in lines]
    assert cells == [["dicomserver", "150", "75.0", "3000/3000"], ["Orthanc", "100", "50.0", "3000/3000"]]
    assert "**DIMSE C-STORE** sends the same N files" in markdown


def test_no_dimse_section_without_dimse_records():
    assert "## DIMSE C-STORE" not in report.render(_records(), _info())


def test_update_replaces_the_rows_measured_again_and_keeps_the_rest():
    earlier = {"info": _info(command="make bench N=500,3000 REPEAT=3"), "records": _records() + _dimse_records()}
    again = [r for r in _dimse_records() if r["server"] == "dicomserver"]
    for r in again:
        r["instances_per_s"] *= 2
    info = _info(command="make bench BENCH_ARGS='--ops dimse-store --update'", date="2026-12-07 09:00 UTC",
                 repeat=2, versions={"dicomserver": "0.2.0"}, wall_seconds=300.0,
                 settings={"dicomserver-dimse": "python -m dicomserver dimse"})
    records, merged = run.merge_runs(earlier, again, info)
    assert len(records) == len(earlier["records"])
    assert merged["command"] == "make bench N=500,3000 REPEAT=3"
    assert merged["updates"] == [{"command": info["command"], "date": "2026-12-07 09:00 UTC", "repeat": 2,
                                  "versions": {"dicomserver": "0.2.0"}, "wall_seconds": 300.0,
                                  "operations": ["dimse-store"]}]
    assert merged["settings"]["dicomserver-dimse"] == "python -m dicomserver dimse"
    markdown = report.render(records, merged)
    _, rows = _table(markdown, "## Concurrency 4\n")
    assert rows["DIMSE C-STORE (storescu)"][2:8] == ["100", "100", "1.00x", "300", "100", "3.00x"]  # new rates
    assert rows["STOW, 10 instances per request"][2:5] == ["200", "100", "2.00x"]  # kept
    assert "**Updated:** the rows of DIMSE C-STORE (storescu) come from a later run, on 2026-12-07 09:00 UTC" in markdown
    assert "--ops dimse-store --update" in markdown.split("## Concurrency 1", 1)[0]
    with pytest.raises(BenchmarkError, match="same --n"):
        run.merge_runs(earlier, again, {**info, "sizes": [500]})


def test_a_second_update_of_the_same_rows_replaces_the_first_note():
    earlier = {"info": _info(command="make bench N=500,3000 REPEAT=3"), "records": _records() + _dimse_records()}
    again = [r for r in _dimse_records() if r["server"] == "dicomserver"]
    first = _info(command="first --update", date="2026-12-07 09:00 UTC", versions={}, wall_seconds=1.0)
    records, merged = run.merge_runs(earlier, again, first)
    second = _info(command="second --update", date="2026-12-08 09:00 UTC", versions={}, wall_seconds=1.0)
    records, merged = run.merge_runs({"info": merged, "records": records}, again, second)
    assert [u["command"] for u in merged["updates"]] == ["second --update"]
    markdown = report.render(records, merged)
    assert markdown.count("**Updated:**") == 1 and "2026-12-08 09:00 UTC" in markdown


def test_orthanc_config_listens_for_dimse(tmp_path):
    config = servers.render_orthanc_config(storage=tmp_path / "s", index=tmp_path / "i", http_port=1, dicom_port=2)
    assert config["DicomServerEnabled"] is True and config["DicomPort"] == 2
    assert config["DicomAet"] == servers.ORTHANC_AE_TITLE
    assert config["DicomAlwaysAllowStore"] is True and config["DicomCheckCalledAet"] is False
    assert config["MaximumPduLength"] == servers.DIMSE_MAX_PDU
    assert config["TcpNoDelay"] is True and config["SyncStorageArea"] is True
