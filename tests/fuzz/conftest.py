"""Hypothesis profiles of the HTTP fuzz tests, and the archive they share per module.

Two profiles, registered here:

- "ci" (the default, what `make test` runs): few enough examples that the whole folder
  takes about two minutes on 2 cores, derandomize=True so every CI run tries the same
  inputs (a red CI run is reproducible with the same command; derandomize implies no
  example database).
- "fuzz" (`make fuzz`): thousands of random examples per test. Failures found are saved
  in tests/fuzz/examples/db/ and tried first on the next `make fuzz`.

Pick one with DICOMSERVER_FUZZ_PROFILE=fuzz (what `make fuzz` sets) or hypothesis'
`--hypothesis-profile=fuzz` (when tests/fuzz is on the command line). The profile only
applies to the tests of this folder (fuzz_support.fuzz_settings): the rest of the suite
keeps hypothesis' defaults.

A failing input found by either profile is kept as an `@example(...)` on its test (see
tests/fuzz/examples/README.md): explicit examples are replayed first by every profile,
deterministic or not, whatever hypothesis version stores its database in.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

#: Per example: the whole of it (a fresh archive, the request, the checks that follow).
#: Generous, as CI shares 2 cores; a request that does not answer at all is caught sooner
#: and for certain by the watchdog in fuzz_support.send.
EXAMPLE_DEADLINE = dt.timedelta(seconds=15)

_COMMON = dict(
    deadline=EXAMPLE_DEADLINE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

settings.register_profile("ci", max_examples=150, derandomize=True, **_COMMON)
settings.register_profile(
    "fuzz",
    max_examples=3000,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(EXAMPLES_DIR / "db")),
    **_COMMON,
)


def pytest_report_header(config):
    from fuzz_support import active_profile

    return f"dicomserver fuzz profile: {active_profile()}"


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-archive")
