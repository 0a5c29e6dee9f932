"""/metrics and the request log through the Flask test client: what is counted, with which
labels, who may scrape, and what a request's log line says.

The metrics live in one registry per process, shared by every app the tests build, so each
test compares a scrape before and after what it does. Answers are read with buffered=True:
a request is counted when the server closes its answer, which the test client does then.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import peewee
from dicom_factory import make_instance, multipart_body, to_bytes
from dicom_samples import SERIES_GREEN_RED, SOP_RED, STUDY_UID, TUTORIAL_FILES, sample
from gunicorn.http.wsgi import FileWrapper
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import ImplicitVRLittleEndian
from werkzeug.test import EnvironBuilder

from backends.base import StorageUnavailable
from dicomserver.metrics import METHODS
from dicomserver.request_log import JsonFormatter, configure, current_request_id

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
ANY_SYNTAX = {"Accept": "application/dicom; transfer-syntax=*"}
MULTIPART_ANY = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers, buffered=True)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def stow(client, body: bytes, **headers: str):
    return client.post("/v2/studies", data=body, headers={**DICOM, **headers}, buffered=True)


# -- what is counted ---------------------------------------------------------------------


def test_stow_outcomes_are_counted_by_reason(app_factory):
    client = app_factory().test_client()
    body = to_bytes(make_instance())
    implicit = to_bytes(make_instance(transfer_syntax=ImplicitVRLittleEndian))
    before = scrape(client)
    assert stow(client, body).status_code == 200
    assert stow(client, body).status_code == 409  # 45070: already exists
    assert stow(client, implicit).status_code == 202  # 45063: implicit VR, stored with a warning
    after = scrape(client)

    assert change(before, after, "dicomweb_stow_instances_total", outcome="stored", reason="") == 1
    assert change(before, after, "dicomweb_stow_instances_total", outcome="failed", reason="45070") == 1
    assert change(before, after, "dicomweb_stow_instances_total", outcome="warning", reason="45063") == 1
    for status in ("200", "409", "202"):
        assert change(before, after, "dicomweb_requests_total", service="stow", method="POST", status=status) == 1
    assert change(before, after, "dicomweb_request_duration_seconds_count", service="stow", method="POST") == 3
    assert change(before, after, "dicomweb_request_bytes_total", service="stow") == 2 * len(body) + len(implicit)
    # Three blobs written; the duplicate's deleted again once the index refused it.
    assert change(before, after, "dicomweb_blobstore_seconds_count", operation="put") == 3
    assert change(before, after, "dicomweb_blobstore_seconds_count", operation="delete") == 1
    assert change(before, after, "dicomweb_index_seconds_count", operation="store_instance") == 3
    assert change(before, after, "dicomweb_index_seconds_sum", operation="store_instance") > 0


def test_retrieves_and_not_found_are_counted(app_factory):
    client = app_factory().test_client()
    ds = make_instance(frames=2)
    assert stow(client, to_bytes(ds)).status_code == 200
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    before = scrape(client)
    instance = client.get(f"/v2/studies/{study}/series/{series}/instances/{sop}", headers=ANY_SYNTAX, buffered=True)
    whole = client.get(f"/v2/studies/{study}", headers=MULTIPART_ANY, buffered=True)  # streamed, no length
    frame = client.get(
        f"/v2/studies/{study}/series/{series}/instances/{sop}/frames/2",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        buffered=True,
    )
    missing = client.get("/v2/studies/1.2.3", headers=MULTIPART_ANY, buffered=True)
    nowhere = client.get("/no/such/route", buffered=True)
    found = client.get("/v2/studies", query_string={"StudyInstanceUID": study}, buffered=True)
    after = scrape(client)

    assert [r.status_code for r in (instance, whole, frame, missing, nowhere, found)] == [200, 200, 200, 404, 404, 200]
    assert change(before, after, "dicomweb_requests_total", service="wado", method="GET", status="200") == 3
    assert change(before, after, "dicomweb_requests_total", service="wado", method="GET", status="404") == 1
    assert change(before, after, "dicomweb_requests_total", service="other", method="GET", status="404") == 1
    assert change(before, after, "dicomweb_requests_total", service="qido", method="GET", status="200") == 1
    sent = sum(len(r.data) for r in (instance, whole, frame, missing))
    assert change(before, after, "dicomweb_response_bytes_total", service="wado") == sent
    assert change(before, after, "dicomweb_request_bytes_total", service="wado") == 0
    assert change(before, after, "dicomweb_index_seconds_count", operation="instances") == 4
    assert change(before, after, "dicomweb_index_seconds_count", operation="search") == 1
    # On local disk the instance, the study and the frame all go by sendfile-able file: no
    # stream is read from the store (S3 reads, streamed, are timed).
    assert change(before, after, "dicomweb_blobstore_seconds_count", operation="read") == 0


def test_a_file_the_server_sends_itself_stays_its_wrapper(app_factory):
    """gunicorn sends an answer by sendfile only if it is its own file wrapper: the observer
    must hand that object on as it is, and count its Content-Length once the server closes it."""
    app = app_factory()
    client = app.test_client()
    ds = make_instance()
    body = to_bytes(ds)
    assert stow(client, body).status_code == 200
    path = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    environ = EnvironBuilder(path=path, headers=ANY_SYNTAX).get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    started: list[str] = []
    before = scrape(client)
    answer = app(environ, lambda status, headers, exc_info=None: started.append(status))
    assert type(answer) is FileWrapper and started == ["200 OK"]
    assert answer.filelike.read() == body
    assert change(before, scrape(client), "dicomweb_response_bytes_total", service="wado") == 0  # not sent yet
    answer.close()
    answer.close()  # a second close counts nothing more
    after = scrape(client)
    assert change(before, after, "dicomweb_response_bytes_total", service="wado") == len(body)
    assert change(before, after, "dicomweb_requests_total", service="wado", method="GET", status="200") == 1


def test_label_values_are_bounded(app_factory):
    """Paths, UIDs and made-up methods never become label values: a service is a blueprint,
    a method one of a fixed set, an unmatched route 'other'."""
    app = app_factory()
    client = app.test_client()
    before = {pairs for name, pairs in scrape(client) if name == "dicomweb_requests_total"}
    for n in range(25):
        client.get(f"/v2/studies/1.2.{n}", headers=ANY_SYNTAX, buffered=True)
        client.open(f"/v2/studies/1.2.{n}", method=f"BREW{n}", buffered=True)
        client.get(f"/made/up/{n}", buffered=True)
    samples = scrape(client)
    labels = {(name, label) for name, pairs in samples for label in pairs if name.startswith("dicomweb_")}
    values = {v for _name, (key, v) in labels}
    assert not [v for v in values if "/" in v or v.count(".") > 1], values
    methods = {v for _name, (key, v) in labels if key == "method"}
    assert "other" in methods and methods <= METHODS | {"other"}
    services = {v for _name, (key, v) in labels if key == "service"}
    assert services <= set(app.blueprints) | {"other"}  # the process' registry holds what earlier tests sent too
    added = {pairs for name, pairs in samples if name == "dicomweb_requests_total"} - before
    assert len(added) <= 4, added  # 75 requests: GET 406, BREW (other) 405, GET other 404, the scrape


def test_stored_studies_and_instances_come_from_the_index(app_factory):
    client = app_factory().test_client()
    assert (value(scrape(client), "dicomweb_studies_stored"), value(scrape(client), "dicomweb_instances_stored")) == (0, 0)
    for name in TUTORIAL_FILES:
        assert stow(client, sample(name).read_bytes()).status_code == 200
    samples = scrape(client)
    assert (value(samples, "dicomweb_studies_stored"), value(samples, "dicomweb_instances_stored")) == (1, 3)
    red = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}"
    assert client.delete(red, buffered=True).status_code == 204
    samples = scrape(client)
    assert (value(samples, "dicomweb_studies_stored"), value(samples, "dicomweb_instances_stored")) == (1, 2)
    assert client.delete(f"/v2/studies/{STUDY_UID}", buffered=True).status_code == 204
    samples = scrape(client)
    assert (value(samples, "dicomweb_studies_stored"), value(samples, "dicomweb_instances_stored")) == (0, 0)


def test_a_scrape_still_answers_when_the_index_is_down(app_factory, monkeypatch, caplog):
    app = app_factory()
    client = app.test_client()

    def down() -> tuple[int, int]:
        raise peewee.OperationalError("unable to open database file")

    monkeypatch.setattr(app.extensions["dicomserver"].index, "stored_counts", down)
    assert client.get("/healthz", buffered=True).status_code == 200
    samples = scrape(client)
    assert not [name for name, _ in samples if name.endswith("_stored")]
    assert value(samples, "dicomweb_requests_total", service="ops", method="GET", status="200") >= 1
    assert "the archive's counts could not be read" in caplog.text


# -- who may scrape ----------------------------------------------------------------------


def test_a_metrics_token_is_required_when_set(app_factory):
    client = app_factory(metrics_token="s3cret-scrape-token").test_client()
    refused = client.get("/metrics", buffered=True)
    assert refused.status_code == 401 and refused.data == b""
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong", "Basic s3cret-scrape-token", "Bearer s3cret-scrape-token-and-more", "s3cret-scrape-token"):
        assert client.get("/metrics", headers={"Authorization": header}, buffered=True).status_code == 401, header
    samples = scrape(client, Authorization="Bearer s3cret-scrape-token")
    assert ("dicomweb_studies_stored", frozenset()) in samples
    assert client.get("/healthz", buffered=True).status_code == 200  # nothing else asks for it
    assert app_factory().test_client().get("/metrics", buffered=True).status_code == 200  # unset: open


def test_metrics_are_not_guarded_by_the_dicomweb_tokens(app_factory, auth_settings, identity_provider):
    """The API's bearer tokens neither guard nor open /metrics: only the scrape token does."""
    open_scrape = app_factory(**auth_settings).test_client()
    assert open_scrape.get("/metrics", buffered=True).status_code == 200
    assert open_scrape.get("/v2/studies", buffered=True).status_code == 401
    guarded = app_factory(**auth_settings, metrics_token="scrape-only").test_client()
    admin = identity_provider.token(roles=["globalAdmin"])
    assert guarded.get("/metrics", headers={"Authorization": f"Bearer {admin}"}, buffered=True).status_code == 401


# -- request ids and the request log -----------------------------------------------------


def test_the_client_request_id_is_kept_when_sane(app_factory, capsys):
    client = app_factory(audit_store=False).test_client()
    capsys.readouterr()
    answer = client.get("/v2/studies/1.2.3", headers={"X-Request-ID": "proxy-7.a_B", **ANY_SYNTAX}, buffered=True)
    assert answer.headers["X-Request-Id"] == "proxy-7.a_B"
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["request_id"] == "proxy-7.a_B"  # the audit trail names it too
    for sent in ("", "has space", "x" * 129, "semi;colon", 'quote"d', "{json}"):
        minted = client.get("/healthz", headers={"X-Request-ID": sent}, buffered=True).headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", minted), sent
    assert client.get("/healthz", headers={"X-Request-ID": "y" * 128}, buffered=True).headers["X-Request-Id"] == "y" * 128


def test_a_500_names_the_request_id_the_client_sent(app_factory, monkeypatch, caplog):
    app = app_factory()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an unexpected bug")

    monkeypatch.setattr(app.extensions["dicomserver"].index, "instances", broken)
    answer = app.test_client().get("/v2/studies/1.2.3", headers={"X-Request-ID": "trace-500", **MULTIPART_ANY}, buffered=True)
    assert answer.status_code == 500
    assert answer.headers["X-Request-Id"] == "trace-500"
    assert b"request id trace-500" in answer.data and b"unexpected bug" not in answer.data
    assert "unhandled error (request id trace-500)" in caplog.text


def request_lines(caplog) -> list[dict]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "dicomserver.requests"]


def test_json_request_lines(app_factory, caplog):
    caplog.set_level(logging.INFO, logger="dicomserver.requests")
    client = app_factory(log_format="json").test_client()
    body = to_bytes(make_instance())
    stored = stow(client, body, **{"X-Request-ID": "stow-1"})
    again = stow(client, multipart_body([body, b"not DICOM"]), **{
        "X-Request-ID": "stow-2", "Content-Type": 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234'})
    warned = stow(client, to_bytes(make_instance(transfer_syntax=ImplicitVRLittleEndian)), **{"X-Request-ID": "stow-3"})
    missing = client.get("/v2/studies/1.2.3", headers={"X-Request-ID": "wado-404", **MULTIPART_ANY}, buffered=True)
    invalid = client.get("/v2/studies/1.x", headers={"X-Request-ID": "wado-400"}, buffered=True)
    assert [r.status_code for r in (stored, again, warned, missing, invalid)] == [200, 409, 202, 404, 400]

    lines = {line["request_id"]: line for line in request_lines(caplog)}
    first = lines["stow-1"]
    assert first["level"] == "INFO" and first["logger"] == "dicomserver.requests"
    assert (first["service"], first["method"], first["route"], first["status"]) == ("stow", "POST", "/v2/studies", 200)
    assert first["bytes_in"] == len(body) and first["bytes_out"] == len(stored.data)
    assert first["duration_ms"] > 0 and first["reason"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert lines["stow-2"]["reason"] == "failed: 43264 x1, 45070 x1"
    assert lines["stow-3"]["reason"] == "warning: 45063 x1"
    assert lines["wado-404"]["route"] == "/v2/studies/<study>"
    assert lines["wado-404"]["reason"] == missing.get_data(as_text=True).strip()
    assert lines["wado-400"]["status"] == 400 and lines["wado-400"]["reason"] == invalid.get_data(as_text=True).strip()


def test_text_format_leaves_requests_to_the_access_log(app_factory, caplog):
    caplog.set_level(logging.INFO, logger="dicomserver.requests")
    client = app_factory().test_client()
    assert client.get("/healthz", buffered=True).status_code == 200
    assert request_lines(caplog) == []


def test_app_lines_logged_while_serving_carry_the_request_id(app_factory, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="dicomserver.requests")
    app = app_factory(log_format="json")

    def full(*args: object, **kwargs: object) -> None:
        raise StorageUnavailable("the disk is gone")

    monkeypatch.setattr(app.extensions["dicomserver"].store, "spool", full)  # STOW receives into a spool
    answer = stow(app.test_client(), to_bytes(make_instance()), **{"X-Request-ID": "outage-1"})
    assert answer.status_code == 503
    (warning,) = [r for r in caplog.records if r.name == "dicomserver.stow" and r.levelno == logging.WARNING]
    # The formatter reads the request id when the line is written: in the request, as a handler would.
    token = current_request_id.set("outage-1")
    try:
        line = json.loads(JsonFormatter().format(warning))
    finally:
        current_request_id.reset(token)
    assert line["request_id"] == "outage-1" and line["level"] == "WARNING"
    assert "storage failed" in line["message"] and "the disk is gone" in line["exception"]
    assert [line["reason"] for line in request_lines(caplog)] == ["failed: 272 x1"]


@contextmanager
def unconfigured_logging() -> Iterator[logging.Logger]:
    """A process that configured no logging (as a gunicorn worker), for a while: pytest's
    handlers are set aside, and the "dicomserver" logger is restored afterwards."""
    root, ours = logging.getLogger(), logging.getLogger("dicomserver")
    saved_root, saved_ours, saved_level = root.handlers[:], ours.handlers[:], ours.level
    root.handlers.clear()
    try:
        yield ours
    finally:
        root.handlers[:] = saved_root
        ours.handlers[:] = saved_ours
        ours.setLevel(saved_level)


def test_app_lines_reach_stderr_once_in_either_format(capsys):
    with unconfigured_logging() as ours:
        configure("json")
        configure("json")  # a second app in the process replaces the handler
        assert len(ours.handlers) == 1
        logging.getLogger("dicomserver.ingest").info("stored %d", 3)
        json_lines = capsys.readouterr().err.splitlines()
        configure("text")
        logging.getLogger("dicomserver.stow").warning("storage failed")
        text_lines = capsys.readouterr().err.splitlines()
    (line,) = json_lines
    assert json.loads(line) | {"time": "", "pid": 0} == {
        "time": "", "pid": 0, "level": "INFO", "logger": "dicomserver.ingest", "message": "stored 3"}
    (line,) = text_lines
    assert re.fullmatch(r"\[[-0-9: +]+\] \[\d+\] \[WARNING\] dicomserver\.stow: storage failed", line), line


def test_a_process_that_configured_logging_keeps_it(capsys):
    with unconfigured_logging() as ours:
        logging.getLogger().addHandler(logging.NullHandler())
        configure("json")
        assert ours.handlers == []
        logging.getLogger("dicomserver.ingest").warning("only where the process sends it")
    assert capsys.readouterr().err == ""
