"""Browser checks from Python: run one check of e2e/checks in Debian's chromium and read its report.

The checks are Node scripts (playwright-core drives the browser); `run_check` starts
`node e2e/run-check.mjs <check> <params>` and returns the JSON report it prints, with
`failed_requests` and `console_errors` already collected for the whole page session. A new
page check is a few lines: e.g. `run_check("page", url=server.url + "/", name="home")`
opens a page, waits for the network to settle and takes a screenshot.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "e2e"
#: Screenshots (git-ignored; CI keeps them as artefacts). E2E_ARTIFACTS moves them.
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS") or E2E / "artifacts")
#: A hang guard, not a measurement: a check waits at most 60 s for any one thing itself.
CHECK_TIMEOUT = 300


def check_tools() -> None:
    """Fail early, saying what `make e2e` would have installed."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (apt-get install nodejs npm)")
    if not (E2E / "node_modules" / "playwright-core").is_dir():
        missing.append("e2e/node_modules (cd e2e && npm ci --ignore-scripts)")
    if not Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")).exists():
        missing.append("/usr/bin/chromium (apt-get install chromium)")
    if missing:
        raise RuntimeError("the browser checks need: " + ", ".join(missing) + "; `make e2e` installs them")


def run_check(check: str, **params: object) -> dict:
    """The report of e2e/checks/<check>.mjs run with `params`: {ok, error, failed_requests,
    console_errors, screenshots, results}."""
    completed = subprocess.run(
        ["node", str(E2E / "run-check.mjs"), check, json.dumps(params)],
        cwd=E2E,
        env={**os.environ, "E2E_ARTIFACTS": str(ARTIFACTS)},
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{check}: node exited with {completed.returncode}\n{completed.stdout}\n{completed.stderr}")
    report = json.loads(lines[-1])
    return {
        "ok": report["ok"],
        "error": report["error"],
        "failed_requests": report["failedRequests"],
        "console_errors": report["consoleErrors"],
        "screenshots": report["screenshots"],
        "results": report["results"],
    }


def assert_clean(report: dict) -> None:
    """The check ran to its end, no request failed and nothing was logged as an error."""
    problems = {key: report[key] for key in ("error", "failed_requests", "console_errors") if report[key]}
    assert not problems, json.dumps(problems, indent=1)
    assert report["ok"]
