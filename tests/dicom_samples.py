"""The sample files in ../shared/dicom and their UIDs (see its README)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("DICOMSERVER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DICOM_DIR = SHARED / "dicom"

STUDY_UID = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES_GREEN_RED = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
SERIES_BLUE = "1.2.826.0.1.3680043.8.498.77033797676425927098669402985243398207"
SOP_RED = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
SOP_GREEN = "1.2.826.0.1.3680043.8.498.12714725698140337137334606354172323212"
SOP_BLUE = "1.2.826.0.1.3680043.8.498.13273713909719068980354078852867170114"


def sample(name: str) -> Path:
    path = DICOM_DIR / name
    if not path.exists():
        pytest.fail(f"sample file {path} not found: the tests need ../shared/dicom beside the repository (or DICOMSERVER_SHARED)")
    return path
