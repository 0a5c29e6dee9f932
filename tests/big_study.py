"""Large studies indexed in seconds: one CT header goes through STOW's parse, and its DICOM
JSON is replicated as many instances as wanted (own UIDs, instance number, position) and
written with `Index.store_many`, without blobs. For `/metadata`, which reads only the index.

    python tests/big_study.py sqlite:////tmp/big/index.db 2000,1500,1500   # for measuring by hand
"""
from __future__ import annotations

import copy
import dataclasses
import io
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from dicom_factory import make_instance, to_bytes

from dicomserver.ingest import Ingestor
from dicomserver.searchable import index_columns

ROOT = "2.25.4242"


def ct_header(number: int = 0) -> bytes:
    """A CT image with the header a scanner writes (about 4 KB of DICOM JSON; pixels tiny)."""
    ds = make_instance(
        study=f"{ROOT}.1", series=f"{ROOT}.2", sop=f"{ROOT}.3.{number}", rows=16, columns=16,
        PatientName="DOE^JANE^Q", PatientID="MRN0012345", PatientBirthDate="19621103", PatientSex="F",
        PatientAge="062Y", PatientWeight="71.5", PatientSize="1.68", AccessionNumber="ACC20240102001",
        StudyID="4711", StudyDescription="CT CHEST ABDOMEN PELVIS WITH CONTRAST",
        SeriesDescription="AXIAL 1.25MM STANDARD", ReferringPhysicianName="REFERRER^RITA^^DR",
        InstitutionName="General Hospital", InstitutionAddress="1 Hospital Road, Springfield",
        StationName="CTSCAN01", Manufacturer="ACME Medical Systems", ManufacturerModelName="Scanner 3000 Pro",
        DeviceSerialNumber="SN-884422", SoftwareVersions=["ct_rel_12.4", "recon_7.1"],
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SeriesDate="20240102", SeriesTime="101733",
        AcquisitionDate="20240102", AcquisitionTime="101801.123456", ContentDate="20240102",
        ContentTime="101802.654321", BodyPartExamined="CHEST", ScanOptions="HELICAL MODE",
        SliceThickness="1.25", KVP="120", DataCollectionDiameter="500", ReconstructionDiameter="380",
        DistanceSourceToDetector="946.746", DistanceSourceToPatient="538.52", GantryDetectorTilt="0",
        TableHeight="152.5", RotationDirection="CW", ExposureTime="600", XRayTubeCurrent="285",
        Exposure="171", FilterType="BODY FILTER", GeneratorPower="34200", FocalSpots=["0.7", "1.2"],
        ConvolutionKernel="STANDARD", PatientPosition="FFS", RevolutionTime=0.6,
        SingleCollimationWidth=0.625, TotalCollimationWidth=40.0, TableSpeed=78.75,
        TableFeedPerRotation=39.375, SpiralPitchFactor=0.984375, CTDIvol=12.34,
        StudyTime="101500", AcquisitionNumber=1, ImagePositionPatient=[-190.0, -190.0, -12.5 * number],
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], FrameOfReferenceUID=f"{ROOT}.4",
        PositionReferenceIndicator="SN", SliceLocation=str(-12.5 * number), PixelSpacing=[0.7421875, 0.7421875],
        WindowCenter=["40", "400"], WindowWidth=["400", "1500"], RescaleIntercept="-1024", RescaleSlope="1",
        RescaleType="HU", WindowCenterWidthExplanation=["WINDOW1", "WINDOW2"],
        PerformedProcedureStepStartDate="20240102", PerformedProcedureStepStartTime="101500",
        PerformedProcedureStepID="PPS-4711", PerformedProcedureStepDescription="CT CHEST ABDOMEN PELVIS",
        RequestedProcedureDescription="CT CHEST ABDOMEN PELVIS WITH CONTRAST", OperatorsName="TECH^TOM",
        ContrastBolusAgent="IOPAMIDOL 370", ContrastBolusVolume="100", ContrastBolusRoute="IV",
        LossyImageCompression="00", BurnedInAnnotation="NO", InstanceCreationDate="20240102",
        InstanceCreationTime="101802", TimezoneOffsetFromUTC="+0100", IssuerOfPatientID="HOSPITAL",
        EthnicGroup="", Occupation="", AdditionalPatientHistory="FOLLOW UP NODULE RIGHT UPPER LOBE",
        ImageComments="", SeriesNumber=2, InstanceNumber=number + 1,
    )
    return to_bytes(ds)


class BigStudy:
    """Instance records of one study, copies of one prepared CT header."""

    def __init__(self, ingestor: Ingestor, study_uid: str = f"{ROOT}.1"):
        data = ct_header()
        prepared = ingestor.prepare(io.BytesIO(data), len(data), study_uid=None)
        self.template = prepared.record("template.dcm", len(data), None)
        self.study_uid = study_uid

    def series_uid(self, series: int) -> str:
        return f"{self.study_uid}.{series + 1}"

    def sop_uid(self, series: int, number: int) -> str:
        return f"{self.series_uid(series)}.{number + 1}"

    def record(self, series: int, number: int) -> Any:
        """Instance `number` of series `series`: its own UIDs, number, position and BulkDataURI."""
        study, series_uid, sop = self.study_uid, self.series_uid(series), self.sop_uid(series, number)
        meta = copy.copy(self.template.metadata)
        meta["0020000D"] = {"vr": "UI", "Value": [study]}
        meta["0020000E"] = {"vr": "UI", "Value": [series_uid]}
        meta["00080018"] = {"vr": "UI", "Value": [sop]}
        meta["00200011"] = {"vr": "IS", "Value": [series + 1]}
        meta["00200013"] = {"vr": "IS", "Value": [number + 1]}
        meta["00200032"] = {"vr": "DS", "Value": [-190.0, -190.0, -1.25 * number]}
        meta["00201041"] = {"vr": "DS", "Value": [-1.25 * number]}
        path = f"/studies/{study}/series/{series_uid}/instances/{sop}"
        meta["7FE00010"] = dict(meta["7FE00010"], BulkDataURI=f"\x01{path}/bulkdata/7FE00010")
        return dataclasses.replace(
            self.template,
            study_instance_uid=study,
            series_instance_uid=series_uid,
            sop_instance_uid=sop,
            blob_key=f"{study}/{series_uid}/{sop}.dcm",
            metadata=meta,
            columns=index_columns(meta),
        )

    def records(self, sizes: Sequence[int], *, first: int = 0) -> Iterator[Any]:
        """`sizes[s]` instances in series s (numbers from `first`), series after series."""
        for series, size in enumerate(sizes):
            for number in range(first, first + size):
                yield self.record(series, number)


def store(ingestor: Ingestor, sizes: Sequence[int], *, batch: int = 1000, **options: Any) -> BigStudy:
    """Index a study of `sizes[s]` instances in series s; no blobs are written."""
    study = BigStudy(ingestor, **options)
    index = ingestor.index
    records = list(study.records(sizes))
    index.connect()
    try:
        for start in range(0, len(records), batch):
            index.store_many(records[start : start + batch])
    finally:
        index.close()
    return study


if __name__ == "__main__":
    from dicomserver import Settings, create_app

    url, sizes = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
    app = create_app(Settings(blobstore_url=url[len("sqlite:///"):] + "-blobs", database_url=url))
    big = store(app.extensions["dicomserver"].ingestor, sizes)
    print(big.study_uid, *(big.series_uid(s) for s in range(len(sizes))))
