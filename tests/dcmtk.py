"""DCMTK's command-line tools for the DIMSE tests, found on PATH.

pynetdicom installs Python apps of the same names (storescu, findscu, ...) into the
virtualenv's bin/, which is first on PATH in a venv: a test of "DCMTK" must not run those.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")


def tool(name: str) -> str | None:
    """The path of DCMTK's `name`: the first executable of that name on PATH that is not a script."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / name
        try:
            with open(candidate, "rb") as f:
                script = f.read(2) == b"#!"
        except OSError:
            continue
        if not script and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


AVAILABLE = all(tool(name) is not None for name in TOOLS)


def command(name: str, *args: str) -> list[str]:
    path = tool(name)
    assert path is not None, f"DCMTK's {name} is not installed"
    return [path, *args]


def run(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(name, *args), capture_output=True, text=True, timeout=60, check=False)
