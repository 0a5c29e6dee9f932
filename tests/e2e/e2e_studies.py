"""The browser tests' studies: one instance each from a sample file, under a patient name of
its own, so that each study list row and viewer can be told apart."""
from __future__ import annotations

from dataclasses import dataclass

import pydicom
from dicom_samples import CR_JPEG_BASELINE, sample


def listed_as(patient_name: str) -> str:
    """A DICOM PN as OHIF's study list shows it: "Family, Given"."""
    family, _, given = str(patient_name).partition("^")
    return f"{family}, {given.split('^')[0]}" if given else family


@dataclass(frozen=True)
class Study:
    key: str
    sample: str
    patient_name: str
    colour: bool  # an RGB image, else greyscale

    @property
    def listed_as(self) -> str:
        return listed_as(self.patient_name)

    def dataset(self) -> pydicom.Dataset:
        ds = pydicom.dcmread(sample(self.sample))
        ds.PatientName = self.patient_name
        return ds


#: Stored by STOW-RS before the browser starts: an MR (16-bit, uncompressed), a JPEG Baseline
#: CR (8-bit, decoded in the browser) and an RGB secondary capture.
STUDIES = (
    Study("mr", "MR_small.dcm", "E2E^MR", colour=False),
    Study("cr-jpeg", CR_JPEG_BASELINE, "E2E^CR JPEG", colour=False),
    Study("rgb", "SC_rgb.dcm", "E2E^RGB", colour=True),
)
#: Stored through OHIF's Upload dialog.
UPLOAD = Study("upload", "CT_small.dcm", "E2E^UPLOAD", colour=False)
