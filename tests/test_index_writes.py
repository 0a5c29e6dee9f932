"""STOW's index rows (index/writes.py): what the statements it saves must not change, on
SQLite and PostgreSQL: ModalitiesInStudy follows its series' modalities ("latest wins"),
the Request Attributes of a series are its latest instance's, a series under another
study is refused."""
from __future__ import annotations

import pytest

from dicomserver.index import DuplicateInstance, InstanceRecord, open_index
from dicomserver.index.models import RequestAttribute, Series, Study
from dicomserver.searchable import index_columns

STUDY = "1.2.826.0.1.3680043.10.2.1"
OTHER_STUDY = "1.2.826.0.1.3680043.10.2.2"


def record(sop: int, series: int, modality: str, *, study: str = STUDY, request: str | None = None) -> InstanceRecord:
    series_uid = f"1.2.826.0.1.3680043.10.2.1.{series}"
    sop_uid = f"1.2.826.0.1.3680043.10.2.1.{series}.{sop}"
    metadata = {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00080018": {"vr": "UI", "Value": [sop_uid]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series_uid]},
    }
    if request:
        metadata["00400275"] = {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": [request]}}]}
    return InstanceRecord(
        study_instance_uid=study, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7", transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"{study}/{series_uid}/{sop_uid}_0-x.dcm", size=1, sha256=None, frames=None,
        metadata=metadata, columns=index_columns(metadata),
    )


@pytest.fixture
def index(database_url):
    index = open_index(database_url)
    index.connect()
    yield index
    index.close()
    index.shutdown()


def modalities(index) -> str | None:
    return Study.get(Study.study_instance_uid == STUDY).modalities_in_study


def test_modalities_in_study_follow_the_series(index):
    index.store_instance(record(1, 1, "CT"), replace=False)
    index.store_instance(record(1, 2, "MR"), replace=False)
    assert modalities(index) == "CT\\MR"
    index.store_instance(record(2, 2, "MR"), replace=False)  # same series, same modality
    assert modalities(index) == "CT\\MR"
    index.store_instance(record(2, 1, "PT"), replace=False)  # the latest of series 1 says PT
    assert modalities(index) == "MR\\PT"
    assert [s.modality for s in Series.select().order_by(Series.id)] == ["PT", "MR"]
    outcomes = index.store_many([record(3, 1, "PT"), record(3, 2, "SR"), record(1, 3, "CT")])
    assert all(not isinstance(o, Exception) for o in outcomes)
    assert modalities(index) == "CT\\PT\\SR"
    study = Study.get(Study.study_instance_uid == STUDY)
    assert (study.number_of_series, study.number_of_instances) == (3, 7)


def test_request_attributes_are_the_latest_instances(index):
    index.store_instance(record(1, 1, "CT", request="A"), replace=False)
    index.store_instance(record(2, 1, "CT", request="B"), replace=False)
    index.store_instance(record(1, 2, "CT"), replace=False)
    rows = [(r.series_id, r.requested_procedure_id) for r in RequestAttribute.select()]
    assert rows == [(Series.get(Series.series_instance_uid.endswith(".1")).id, "B")]
    index.store_instance(record(3, 1, "CT"), replace=False)
    assert RequestAttribute.select().count() == 0


def test_a_series_under_another_study_is_refused(index):
    index.store_instance(record(1, 1, "CT"), replace=False)
    with pytest.raises(DuplicateInstance):
        index.store_instance(record(2, 1, "CT", study=OTHER_STUDY), replace=False)
    assert Study.select().count() == 1


def test_a_series_of_a_stored_study_under_another_stored_study_is_refused(index):
    index.store_instance(record(1, 1, "CT"), replace=False)
    index.store_instance(record(1, 2, "CT", study=OTHER_STUDY), replace=False)
    with pytest.raises(DuplicateInstance):
        index.store_instance(record(2, 1, "CT", study=OTHER_STUDY), replace=False)
    assert [s.number_of_instances for s in Study.select().order_by(Study.id)] == [1, 1]
