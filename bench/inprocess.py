"""Per-request CPU of the hot paths in-process (Flask test client), one commit against another.

    python bench/inprocess.py                      # the working tree
    python bench/inprocess.py --compare 620c7c4    # that commit and the working tree, alternating

For a refactor, where `make bench` (servers, sockets, wrk) is too noisy to show a change of
a few percent: each round builds the app of one source tree in a fresh process on a fresh
SQLite index, stores 300 small CT-like instances (the last 275 timed), then times a fixed
number of requests per operation with `time.process_time()`. Rounds alternate between the
trees; the report gives, per operation, the best round (the least disturbed) and the median
in ms of CPU per request. A commit is checked out with `git worktree` into a temp folder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTANCES = 300
WARM = 25  # instances stored before the STOW clock starts


def measure() -> dict[str, float]:
    """One round in this process, of the source tree on sys.path; ms of CPU per request."""
    from dicom_factory import make_instance, to_bytes

    from dicomserver import Settings, create_app

    folder = tempfile.mkdtemp(prefix="dicomserver-inprocess-")
    app = create_app(Settings(blobstore_url=f"{folder}/blobs", database_url=f"sqlite:///{folder}/index.db"))
    client = app.test_client()
    stow_headers = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
    study = "1.2.3.4"
    bodies = [
        to_bytes(
            make_instance(
                study=study, series=f"{study}.{i % 3}", sop=f"{study}.9.{i}", rows=256, columns=256,
                InstanceNumber=i, PatientName=f"SMITH^J{i}", PatientID=f"P{i % 5}",
            )
        )
        for i in range(INSTANCES)
    ]
    for number, body in enumerate(bodies):
        if number == WARM:
            start = time.process_time()
        assert client.post("/v2/studies", data=body, headers=stow_headers).status_code == 200
    results = {"STOW, 1 instance per request": (time.process_time() - start) / (INSTANCES - WARM) * 1000}

    def timed(path: str, headers: dict[str, str] | None = None, n: int = 1500) -> float:
        for _ in range(50):
            client.get(path, headers=headers or {}).close()
        begin = time.process_time()
        for _ in range(n):
            response = client.get(path, headers=headers or {})
            assert response.status_code == 200, (path, response.status_code)
            response.close()
        return (time.process_time() - begin) / n * 1000

    instance = f"/v2/studies/{study}/series/{study}.1/instances/{study}.9.7"
    results.update(
        {
            "WADO instance": timed(instance, {"Accept": "application/dicom; transfer-syntax=*"}),
            "WADO instance, multipart": timed(
                instance, {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            ),
            "WADO frames/1": timed(instance + "/frames/1", {"Accept": "application/octet-stream; transfer-syntax=*"}),
            "bulk data (Pixel Data)": timed(instance + "/bulkdata/7FE00010", {"Accept": "application/octet-stream"}),
            "series /metadata (100 instances)": timed(f"/v2/studies/{study}/series/{study}.1/metadata", n=300),
            "QIDO studies?PatientID=": timed("/v2/studies?PatientID=P1"),
            "QIDO instances?limit=100": timed(f"/v2/studies/{study}/instances?limit=100", n=300),
        }
    )
    app.extensions["dicomserver"].index.shutdown()
    return results


def run_round(tree: Path) -> dict[str, float]:
    """One round in a fresh interpreter, importing dicomserver from `tree`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(tree / "tests")]))
    output = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--round"], cwd=tree, env=env,
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(output.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", metavar="REV", help="also measure this commit, in alternation")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tree (default 5)")
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)  # one round, JSON out
    args = parser.parse_args()
    if args.round:
        print(json.dumps(measure()))
        return
    trees: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="dicomserver-rev-") as scratch:
        if args.compare:
            worktree = Path(scratch) / "tree"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run([*git, "add", "--detach", "-q", str(worktree), args.compare], check=True)
            trees[args.compare] = worktree
        trees["working tree"] = REPO
        try:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for number in range(args.rounds):
                for name, tree in trees.items():
                    rounds[name].append(run_round(tree))
                    print(f"round {number + 1}/{args.rounds}: {name} done", file=sys.stderr)
        finally:
            if args.compare:
                subprocess.run([*git, "remove", "--force", str(trees[args.compare])], check=False)
    names = list(trees)
    print("| operation (ms of CPU per request) | " + " | ".join(f"{n}: best / median" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for operation in rounds[names[0]][0]:
        cells = []
        for name in names:
            values = [r[operation] for r in rounds[name]]
            cells.append(f"{min(values):.3f} / {statistics.median(values):.3f}")
        print(f"| {operation} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
