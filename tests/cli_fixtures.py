"""A folder tree of files for `dicomserver import`, and the environment of a local archive.

The tree holds what a real folder holds: instances of two studies in nested folders, a
copy of one of them (a duplicate), an instance whose Pixel Data is cut short (STOW
refuses it), a file that is not DICOM at all and a DICOMDIR-named file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dicom_factory import make_instance, to_bytes
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


@dataclass
class Tree:
    root: Path
    #: The instances that are stored by an import: file → its dataset.
    instances: dict[Path, Dataset] = field(default_factory=dict)
    duplicate: Path | None = None
    truncated: Path | None = None
    not_dicom: Path | None = None
    #: pydicom's DICOMDIR: DICOM, but a media directory, no instance.
    dicomdir: Path | None = None


def archive_env(folder: Path) -> dict[str, str]:
    """DICOMWEB_* variables of a local blob store and SQLite index in `folder`."""
    return {
        "DICOMWEB_BLOBSTORE_URL": str(folder / "blobs"),
        "DICOMWEB_DATABASE_URL": f"sqlite:///{folder / 'index.db'}",
    }


def make_tree(root: Path) -> Tree:
    tree = Tree(root)
    study_a, study_b, series_a = generate_uid(), generate_uid(), generate_uid()
    layout = [
        ("a/series1/1.dcm", make_instance(study=study_a, series=series_a, InstanceNumber=1, rows=32, columns=32)),
        ("a/series1/2.dcm", make_instance(study=study_a, series=series_a, InstanceNumber=2, rows=32, columns=32)),
        ("a/series2/1.dcm", make_instance(study=study_a, rows=8, columns=8, frames=3)),
        ("b/deep/er/1.dcm", make_instance(study=study_b, rows=16, columns=16, bits=8)),
    ]
    for name, ds in layout:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_bytes(ds))
        tree.instances[path] = ds
    tree.duplicate = root / "copies" / "same-as-a-1.dcm"
    tree.duplicate.parent.mkdir()
    tree.duplicate.write_bytes((root / "a/series1/1.dcm").read_bytes())
    tree.truncated = root / "b" / "cut.dcm"
    tree.truncated.write_bytes(to_bytes(make_instance(study=study_b, rows=16, columns=16))[:-10])
    tree.not_dicom = root / "b" / "notes.txt"
    tree.not_dicom.write_text("scanned on the old PACS; see the ticket\n")
    tree.dicomdir = root / "DICOMDIR"
    tree.dicomdir.write_bytes(Path(get_testdata_file("DICOMDIR", download=False)).read_bytes())
    return tree
