"""Storage Commitment Push Model SCP (PS3.4 Annex J) of the DIMSE gateway, driven by
pynetdicom clients (DCMTK has no storage commitment SCU): instances stored over C-STORE or
STOW, an N-ACTION referencing them (and others), and the N-EVENT-REPORT that follows, on the
requestor's association or on a new one to it.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from dicom_factory import make_instance, to_bytes
from live_servers import free_port
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)
from test_dimse import AE_TITLE, Running, audit_events

from dicomserver import Settings, create_app
from dicomserver.archive import open_archive
from dicomserver.dimse import Gateway
from dicomserver.settings import ConfigError

#: How long a test waits for a report to arrive (a deadline, not a timing assertion).
WAIT = 30


class Reports:
    """What an SCU's EVT_N_EVENT_REPORT handler received: (event type, event information)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event: Any) -> tuple[int, None]:
        self.received.append((event.event_type, event.event_information))
        self.arrived.set()
        return 0x0000, None

    def wait(self) -> tuple[int, Dataset]:
        assert self.arrived.wait(WAIT), "no N-EVENT-REPORT arrived"
        assert len(self.received) == 1
        return self.received[0]


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path)
    yield running
    running.stop()


class RunningOn(Running):
    """`Running` on the given index and blob store (SQLite + local disk, PostgreSQL + S3)."""

    def __init__(self, database_url: str, blobstore_url: str):
        self.port = free_port()
        self.settings = Settings(blobstore_url=blobstore_url, database_url=database_url, dimse_ae_title=AE_TITLE,
                                 dimse_port=self.port)
        self.archive = open_archive(self.settings)
        self.gateway = Gateway(self.archive)
        self.server = self.gateway.start(block=False)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()


@pytest.fixture
def any_gateway(database_url, blobstore_url):
    running = RunningOn(database_url, blobstore_url)
    yield running
    running.stop()


def associate(gateway: Running, reports: Reports | None = None, title: str = "TESTSCU") -> Any:
    ae = AE(ae_title=title)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)] if reports else []
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AE_TITLE, evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def action_information(transaction_uid: str | None, references: list[tuple[str, str]] | None) -> Dataset:
    info = Dataset()
    if transaction_uid is not None:
        info.TransactionUID = transaction_uid
    if references is not None:
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = Sequence(items)
    return info


def n_action(assoc: Any, info: Dataset, action_type: int = 1) -> Dataset:
    status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    return status


def stow(gateway: Running, ds: Dataset) -> None:
    response = gateway.client.post("/v2/studies", data=to_bytes(ds), content_type="application/dicom")
    assert response.status_code == 200, response.data


def refs(items: Sequence) -> list[tuple[str, str]]:
    return [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in items]


def committed(gateway: Running, references: list[tuple[str, str]], transaction: str | None = None) -> tuple[int, Dataset]:
    """One N-ACTION on a new association, answered Success; the report that came back on it."""
    reports = Reports()
    assoc = associate(gateway, reports)
    try:
        assert n_action(assoc, action_information(transaction or generate_uid(), references)).Status == 0x0000
        return reports.wait()
    finally:
        assoc.release()


def test_all_stored_instances_are_committed_on_the_same_association(gateway, caplog):
    caplog.set_level(logging.WARNING, logger="dicomserver.dimse_commitment")
    over_dimse = make_instance()
    over_web = make_instance()
    stow(gateway, over_web)
    reports = Reports()
    assoc = associate(gateway, reports)
    try:
        assert assoc.send_c_store(over_dimse).Status == 0x0000
        transaction = generate_uid()
        references = [(CTImageStorage, over_dimse.SOPInstanceUID), (CTImageStorage, over_web.SOPInstanceUID)]
        assert n_action(assoc, action_information(transaction, references)).Status == 0x0000
        event_type, info = reports.wait()
    finally:
        assoc.release()
    assert event_type == 1
    assert info.TransactionUID == transaction
    assert refs(info.ReferencedSOPSequence) == references
    assert "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == AE_TITLE
    assert not caplog.records  # delivered there, not given up on


def test_two_requests_on_one_association_each_get_their_report_between_other_operations(gateway):
    stored = make_instance()
    stow(gateway, stored)
    reports = Reports()
    assoc = associate(gateway, reports)
    transactions = [generate_uid(), generate_uid()]
    try:
        for transaction, sop in zip(transactions, (stored.SOPInstanceUID, generate_uid()), strict=True):
            assert n_action(assoc, action_information(transaction, [(CTImageStorage, sop)])).Status == 0x0000
        # The requestor goes on storing while the reports come: every operation is answered.
        for _ in range(5):
            assert assoc.send_c_store(make_instance()).Status == 0x0000
        for _ in range(WAIT * 10):
            if len(reports.received) == 2:
                break
            reports.arrived.wait(0.1)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert sorted((info.TransactionUID, event_type) for event_type, info in reports.received) == sorted(
        zip(transactions, (1, 2), strict=True))


def test_unknown_wrong_class_deleted_and_blobless_instances_fail(any_gateway):
    gateway = any_gateway
    stored = make_instance()
    wrong_class = make_instance()
    deleted = make_instance()
    blobless = make_instance()
    for ds in (stored, wrong_class, deleted, blobless):
        stow(gateway, ds)
    # DELETE over DICOMweb.
    url = f"/v2/studies/{deleted.StudyInstanceUID}/series/{deleted.SeriesInstanceUID}/instances/{deleted.SOPInstanceUID}"
    assert gateway.client.delete(url).status_code == 204
    # The blob gone from the store under its index row.
    index = gateway.archive.index
    index.connect()
    try:
        [instance] = index.instances(blobless.StudyInstanceUID, blobless.SeriesInstanceUID, blobless.SOPInstanceUID)
    finally:
        index.close()
    gateway.archive.store.delete(instance.blob_key)
    unknown = generate_uid()

    transaction = generate_uid()
    event_type, info = committed(gateway, [
        (CTImageStorage, stored.SOPInstanceUID),
        (CTImageStorage, unknown),
        (MRImageStorage, wrong_class.SOPInstanceUID),
        (CTImageStorage, deleted.SOPInstanceUID),
        (CTImageStorage, blobless.SOPInstanceUID),
    ], transaction)
    assert event_type == 2
    assert info.TransactionUID == transaction
    assert refs(info.ReferencedSOPSequence) == [(CTImageStorage, stored.SOPInstanceUID)]
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
        (CTImageStorage, unknown, 0x0112),
        (MRImageStorage, wrong_class.SOPInstanceUID, 0x0119),
        (CTImageStorage, deleted.SOPInstanceUID, 0x0112),
        (CTImageStorage, blobless.SOPInstanceUID, 0x0112),
    ]


def test_nothing_committed_has_no_referenced_sop_sequence(gateway):
    event_type, info = committed(gateway, [(CTImageStorage, generate_uid())])
    assert event_type == 2
    assert "ReferencedSOPSequence" not in info
    assert [i.FailureReason for i in info.FailedSOPSequence] == [0x0112]


class RequestorSCP:
    """The SCU's own Storage Commitment SCU-as-acceptor: it accepts an association where the
    archive proposes the SCP role and receives the report there (PS3.4 J.3.3.1.3)."""

    def __init__(self, title: str = "TESTSCU"):
        self.port = free_port()
        self.reports = Reports()
        ae = AE(ae_title=title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.reports.handler)]
        )

    def stop(self) -> None:
        self.server.shutdown()


def test_a_released_requestor_gets_the_report_on_a_new_association(tmp_path):
    scp = RequestorSCP()
    running = Running(tmp_path, dimse_peers=(f"TESTSCU@127.0.0.1:{scp.port}",), dimse_dimse_timeout=5.0)
    try:
        ds = make_instance()
        stow(running, ds)
        # No N-EVENT-REPORT handler on this association, and released at once: the report
        # cannot be delivered here (refused, ignored during release, or released already).
        assoc = associate(running)
        transaction = generate_uid()
        try:
            status = n_action(assoc, action_information(transaction, [(CTImageStorage, ds.SOPInstanceUID)]))
        finally:
            assoc.release()
        assert status.Status == 0x0000
        event_type, info = scp.reports.wait()
        assert event_type == 1
        assert info.TransactionUID == transaction
        assert refs(info.ReferencedSOPSequence) == [(CTImageStorage, ds.SOPInstanceUID)]
    finally:
        running.stop()
        scp.stop()


def test_an_unlisted_requestor_that_leaves_gets_no_report_and_the_gateway_goes_on(tmp_path, caplog):
    scp = RequestorSCP()  # listening, but not in DICOMWEB_DIMSE_PEERS (none listed: any caller)
    running = Running(tmp_path, dimse_dimse_timeout=5.0)
    try:
        caplog.set_level(logging.WARNING, logger="dicomserver.dimse_commitment")
        assoc = associate(running)
        transaction = generate_uid()
        try:
            status = n_action(assoc, action_information(transaction, [(CTImageStorage, generate_uid())]))
        finally:
            assoc.release()
        assert status.Status == 0x0000
        gave_up = threading.Event()
        for _ in range(WAIT * 10):
            if any(transaction in r.getMessage() and "not delivered" in r.getMessage() for r in caplog.records):
                gave_up.set()
                break
            gave_up.wait(0.1)
        assert gave_up.is_set(), [r.getMessage() for r in caplog.records]
        assert scp.reports.received == []
        again = associate(running)
        try:
            assert again.send_c_echo().Status == 0x0000
        finally:
            again.release()
    finally:
        running.stop()
        scp.stop()


@pytest.mark.parametrize(
    ("info", "action_type", "status", "comment"),
    [
        (action_information(None, [(CTImageStorage, "1.2.3")]), 1, 0x0115, "Transaction UID"),
        (action_information("1.2.3.4", None), 1, 0x0115, "Referenced SOP Sequence"),
        (action_information("1.2.3.4", []), 1, 0x0115, "Referenced SOP Sequence"),
        (action_information("1.2.3.4", [(CTImageStorage, "")]), 1, 0x0115, "item 1"),
        (action_information("not a uid", [(CTImageStorage, "1.2.3")]), 1, 0x0115, "Transaction UID"),
        (action_information("1.2.3.4", [(CTImageStorage, f"1.2.3.{n}") for n in range(4)]), 1, 0x0213, "3"),
        (action_information("1.2.3.4", [(CTImageStorage, "1.2.3")]), 2, 0x0123, "Action Type ID"),
    ],
)
def test_a_malformed_n_action_is_refused_and_gets_no_report(tmp_path, info, action_type, status, comment):
    running = Running(tmp_path, dimse_commitment_max_references=3)
    reports = Reports()
    try:
        assoc = associate(running, reports)
        try:
            answer = n_action(assoc, info, action_type)
            # The association goes on: an echo after it is answered (and no report came first).
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        running.stop()
    assert answer.Status == status
    assert comment in answer.ErrorComment
    assert reports.received == []


def test_a_listed_ae_title_from_another_host_is_refused(tmp_path):
    running = Running(tmp_path, dimse_peers=("TESTSCU@192.0.2.7",))
    reports = Reports()
    try:
        assoc = associate(running, reports)
        try:
            answer = n_action(assoc, action_information(generate_uid(), [(CTImageStorage, generate_uid())]))
        finally:
            assoc.release()
    finally:
        running.stop()
    assert answer.Status == 0x0124
    assert reports.received == []


def test_commitment_settings():
    settings = Settings.from_env({
        "DICOMWEB_DIMSE_COMMITMENT_MAX_REFERENCES": "500",
        "DICOMWEB_DIMSE_COMMITMENT_ATTEMPTS": "5",
        "DICOMWEB_DIMSE_COMMITMENT_RETRY_SECONDS": "0",
    })
    assert (settings.dimse_commitment_max_references, settings.dimse_commitment_attempts,
            settings.dimse_commitment_retry_seconds) == (500, 5, 0.0)
    for variable, value in (
        ("DICOMWEB_DIMSE_COMMITMENT_MAX_REFERENCES", "0"),
        ("DICOMWEB_DIMSE_COMMITMENT_ATTEMPTS", "many"),
        ("DICOMWEB_DIMSE_COMMITMENT_RETRY_SECONDS", "-1"),
    ):
        with pytest.raises(ConfigError, match=variable):
            Settings.from_env({variable: value})


def test_thousands_of_references_are_one_query_per_batch(gateway, monkeypatch):
    """An N-ACTION of 1,200 references reads the index in 3 statements (500 UIDs each)."""
    stored = [make_instance() for _ in range(3)]
    for ds in stored:
        stow(gateway, ds)
    index = gateway.archive.index
    statements: list[str] = []
    execute = index.db.execute_sql

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        if "sop_class_uid" in sql and "IN (" in sql:
            statements.append(sql)
        return execute(sql, *args, **kwargs)

    monkeypatch.setattr(index.db, "execute_sql", counted)
    references = [(CTImageStorage, ds.SOPInstanceUID) for ds in stored]
    references += [(CTImageStorage, generate_uid()) for _ in range(1197)]
    event_type, info = committed(gateway, references)
    assert event_type == 2
    assert refs(info.ReferencedSOPSequence) == references[:3]
    assert len(info.FailedSOPSequence) == 1197
    assert len(statements) == 3


def test_commitment_is_evaluated_in_the_gateways_partition_and_audited(tmp_path):
    """With DICOMWEB_DIMSE_PARTITION set, an instance is committed only when it is stored in
    that partition (the same SOP Instance UID elsewhere is no such instance); the N-ACTION is
    a record of the audit trail with its Transaction UID."""
    running = Running(tmp_path, partitions=True, dimse_partition="dimse.part", audit_log=None)
    try:
        here = make_instance()
        elsewhere = make_instance()
        for partition, ds in (("dimse.part", here), ("Microsoft.Default", elsewhere)):
            response = running.client.post(f"/v2/partitions/{partition}/studies", data=to_bytes(ds),
                                           content_type="application/dicom")
            assert response.status_code == 200, response.data
        transaction = generate_uid()
        event_type, info = committed(
            running, [(CTImageStorage, here.SOPInstanceUID), (CTImageStorage, elsewhere.SOPInstanceUID)], transaction)
        assert event_type == 2
        assert refs(info.ReferencedSOPSequence) == [(CTImageStorage, here.SOPInstanceUID)]
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
            (elsewhere.SOPInstanceUID, 0x0112)]
        events = audit_events(running)
        [action] = [e for e in events if "N-ACTION" in json.dumps(e)]
        assert transaction in json.dumps(action)
        assert action["outcome"] == "0"
    finally:
        running.stop()
