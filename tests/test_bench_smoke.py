"""The benchmark harness end to end, small: `bench/run.py --quick --n 50 --servers dicomserver`
(with the quick big study of 200 instances, `dicomserver import` and DIMSE C-STORE by storescu
into `dicomserver dimse`).

Not the benchmark itself (that is `make bench`): this only proves the harness still
runs against the current server, that every operation gets a positive figure, and
that the report it writes has a row per operation. It starts its own gunicorn and
`dicomserver dimse` (through the harness) and needs wrk and DCMTK; no Orthanc, no nginx.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import dcmtk_available
from bench.ops import BIG_OPS, DIMSE_OP, GET_OPS, STOW_OPS

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.live,
    pytest.mark.slow,
    pytest.mark.skipif(
        (shutil.which("wrk") is None or not dcmtk_available()) and not os.environ.get("CI"),
        reason="wrk or DCMTK (Debian packages wrk, dcmtk) is not installed; `make test` installs them as root",
    ),
]


def _table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under `heading`, keyed by their first cell."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"} and cells[0] not in ("operation", "N"):
            rows[cells[0]] = cells
    return rows


def _number(cell: str) -> float:
    match = re.match(r"[\d,]+(\.\d+)?", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(0).replace(",", ""))


def test_quick_run_against_dicomserver(tmp_path):
    out = tmp_path / "benchmarks.md"
    command = [
        sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--n", "50", "--servers", "dicomserver",
        "--no-nginx", "--out", str(out), "--cache-dir", str(tmp_path / "data"), "--time-limit", "500",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    markdown = out.read_text()
    labels = [op.label for op in [*STOW_OPS, DIMSE_OP, *GET_OPS]]
    for conc in (1, 4):
        rows = _table_rows(markdown, f"## Concurrency {conc}\n")
        for label in labels + ([op.label for op in BIG_OPS] if conc == 4 else []):
            assert label in rows, f"no row for {label!r} at concurrency {conc}:\n{markdown}"
            # operation | metric | dicomserver N=50
            assert _number(rows[label][2]) > 0, rows[label]
        assert _number(rows["peak RSS, whole run"][2]) > 0

    # The gunicorn floors (bench/floor_app.py) are measured and reported beside dicomserver.
    floors = _table_rows(markdown, "## WADO instance against nginx")
    assert set(floors) == {"50"}
    for row in floors.values():  # N | concurrency | nginx | wrk CPU | bare WSGI | Flask route | dicomserver | ...
        assert _number(row[4]) > 0 and _number(row[5]) > 0, row

    records = json.loads(out.with_suffix(".json").read_text())["records"]
    keys = {(r["op"], r["concurrency"]) for r in records if r["server"] == "dicomserver"}
    assert keys == ({(op.key, c) for op in [*STOW_OPS, DIMSE_OP, *GET_OPS] for c in (1, 4)}
                    | {(op.key, 4) for op in BIG_OPS} | {("big-stow", 4)})
    # DIMSE C-STORE: half of the files at c=1, the other half at c=4, all in the gateway's index.
    dimse = sorted((r["concurrency"], r["instances"], r["stored_after"]) for r in records if r["op"] == DIMSE_OP.key)
    assert dimse == [(1, 25, 25), (4, 25, 50)]
    assert "50/50" in markdown.split("## DIMSE C-STORE", 1)[1]
    imports = [r for r in records if r["server"] == "dicomserver-import"]
    assert len(imports) == 1 and imports[0]["instances"] == 50 and imports[0]["instances_per_s"] > 0
    for r in records:
        assert r["n"] == 50 and r["seconds"] > 0 and r["server_cpu_s"] > 0 and r["server_peak_rss"] > 0, r
