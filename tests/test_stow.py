"""STOW-RS through the Flask test client: media types, response dataset, status codes."""
from __future__ import annotations

import pytest
from dicom_factory import make_instance, multipart_body, to_bytes
from dicom_samples import SERIES_BLUE, SOP_BLUE, STUDY_UID, sample
from urllib3.filepost import encode_multipart_formdata

JSON = {"Accept": "application/dicom+json"}


def post(client, body: bytes, content_type: str, url: str = "/v2/studies", method: str = "POST", accept="application/dicom+json"):
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    return client.open(url, method=method, data=body, headers=headers)


def referenced(response) -> list[dict]:
    return response.json.get("00081199", {}).get("Value", [])


def failed(response) -> list[dict]:
    return response.json.get("00081198", {}).get("Value", [])


def failure_reasons(response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in failed(response)]


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234',
        "multipart/related; boundary=BOUNDARY-1234",
        'multipart/related; type="application/dicom"',  # no boundary: found in the body
        "multipart/related",
        "multipart/related; type=application/dicom; boundary=\"BOUNDARY-1234\"",
    ],
)
def test_multipart_header_forms(client, content_type):
    ds = make_instance()
    response = post(client, multipart_body([to_bytes(ds)]), content_type)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "application/dicom+json"
    (item,) = referenced(response)
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert item["00081150"]["Value"] == [ds.SOPClassUID]
    assert item["00081190"]["Value"] == [
        f"http://localhost/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    ]
    assert "00081198" not in response.json


def test_form_data_parts_from_urllib3(client):
    """The Python tutorial's encode_multipart_formdata body with a bare multipart/related."""
    a, b = make_instance(), make_instance()
    body, _ = encode_multipart_formdata(
        {"file_red": ("dicomfile", to_bytes(a), "application/dicom"), "file_green": ("dicomfile", to_bytes(b), "application/dicom")}
    )
    response = post(client, body, "multipart/related")
    assert response.status_code == 200
    assert {i["00081155"]["Value"][0] for i in referenced(response)} == {a.SOPInstanceUID, b.SOPInstanceUID}


def test_single_part_and_duplicate_is_409(client):
    ds = make_instance()
    assert post(client, to_bytes(ds), "application/dicom").status_code == 200
    again = post(client, to_bytes(ds), "application/dicom")
    assert again.status_code == 409
    assert failure_reasons(again) == [45070]
    assert failed(again)[0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    comment = failed(again)[0]["00741048"]["Value"][0]["00000902"]["Value"][0]
    assert "already exists" in comment


def test_partial_success_is_202(client):
    good, dup = make_instance(), make_instance()
    assert post(client, to_bytes(dup), "application/dicom").status_code == 200
    response = post(client, multipart_body([to_bytes(good), to_bytes(dup)]), "multipart/related")
    assert response.status_code == 202
    assert [i["00081155"]["Value"][0] for i in referenced(response)] == [good.SOPInstanceUID]
    assert failure_reasons(response) == [45070]


def test_same_instance_twice_in_one_request(client):
    ds = make_instance()
    response = post(client, multipart_body([to_bytes(ds), to_bytes(ds)]), "multipart/related")
    assert response.status_code == 202
    assert failure_reasons(response) == [45070]


def test_study_in_path_mismatch_and_retrieve_url(client):
    study = "1.2.3.4"
    inside, outside = make_instance(study=study), make_instance()
    response = post(client, multipart_body([to_bytes(inside), to_bytes(outside)]), "multipart/related", url=f"/v1/studies/{study}")
    assert response.status_code == 202
    assert response.json["00081190"]["Value"] == [f"http://localhost/v1/studies/{study}"]
    assert failure_reasons(response) == [43265]
    all_wrong = post(client, to_bytes(make_instance()), "application/dicom", url=f"/v1/studies/{study}")
    assert all_wrong.status_code == 409
    assert "00081190" not in all_wrong.json


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_required_uid_is_43264(client, keyword):
    ds = make_instance()
    delattr(ds, keyword)
    response = post(client, to_bytes(ds), "application/dicom")
    assert response.status_code == 409
    assert failure_reasons(response) == [43264]
    comment = failed(response)[0]["00741048"]["Value"][0]["00000902"]["Value"][0]
    assert keyword in comment


def test_invalid_uid_in_dataset_is_43264(client):
    ds = make_instance()
    ds.SeriesInstanceUID = "1.2.abc"
    response = post(client, to_bytes(ds), "application/dicom")
    assert response.status_code == 409
    assert failure_reasons(response) == [43264]


def test_not_dicom_part_fails_with_43264(client):
    response = post(client, multipart_body([b"hello, not dicom"]), "multipart/related")
    assert response.status_code == 409
    assert failure_reasons(response) == [43264]


def test_unsupported_part_type_fails_that_part(client):
    ds = make_instance()
    body = multipart_body([to_bytes(ds)]) [: -len(b"--BOUNDARY-1234--\r\n")]
    body += b"--BOUNDARY-1234\r\nContent-Type: text/plain\r\n\r\nhello\r\n--BOUNDARY-1234--\r\n"
    response = post(client, body, "multipart/related")
    assert response.status_code == 202
    assert failure_reasons(response) == [43264]


def test_malformed_study_uid_in_path_is_400(client):
    response = post(client, to_bytes(make_instance()), "application/dicom", url="/v2/studies/1.2.3.abc")
    assert response.status_code == 400
    assert b"not a valid DICOM UID" in response.data
    long_uid = "1." + "2" * 64
    assert post(client, b"", "application/dicom", url=f"/v2/studies/{long_uid}").status_code == 400


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/json", "text/plain", ""])
def test_other_media_types_are_415(client, content_type):
    response = post(client, to_bytes(make_instance()), content_type)
    assert response.status_code == 415
    assert b"multipart/related" in response.data


def test_multipart_with_other_root_type_is_415(client):
    response = post(client, multipart_body([b"{}"]), 'multipart/related; type="application/dicom+xml"')
    assert response.status_code == 415


def test_empty_body_is_400(client):
    assert post(client, b"", "application/dicom").status_code == 400
    assert post(client, b"", "multipart/related; boundary=x").status_code == 400
    assert post(client, b"--x--\r\n", "multipart/related; boundary=x").status_code == 400


def test_truncated_body_stores_the_whole_parts_and_says_so(client):
    """Not a 400: the client must learn which instances were stored before the cut."""
    whole, cut = make_instance(), make_instance(study="1.2.3.9")
    body = multipart_body([to_bytes(whole), to_bytes(cut)])
    response = post(client, body[:-40], "multipart/related; boundary=BOUNDARY-1234")
    assert response.status_code == 202
    (stored,) = response.json["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [whole.SOPInstanceUID]
    (failed,) = response.json["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [43264]
    comment = failed["00741048"]["Value"][0]["00000902"]["Value"][0]
    assert "malformed after the parts before this one" in comment and "closing boundary" in comment
    assert client.get(f"/v2/studies/{whole.StudyInstanceUID}/metadata").status_code == 200
    assert client.get(f"/v2/studies/{cut.StudyInstanceUID}/metadata").status_code == 404
    assert client.get("/v2/instances", query_string={"SOPInstanceUID": cut.SOPInstanceUID}).json == []


def test_a_body_malformed_before_any_part_is_complete_is_400_and_stores_nothing(client):
    cut = make_instance()
    body = multipart_body([to_bytes(cut)])
    response = post(client, body[:-40], "multipart/related; boundary=BOUNDARY-1234")
    assert response.status_code == 400
    assert b"closing boundary" in response.data and b"nothing was stored" in response.data
    assert client.get("/v2/instances", query_string={"SOPInstanceUID": cut.SOPInstanceUID}).json == []


def test_unacceptable_accept_is_406(client):
    response = post(client, to_bytes(make_instance()), "application/dicom", accept="application/dicom")
    assert response.status_code == 406
    assert post(client, to_bytes(make_instance()), "application/dicom", accept="*/*").status_code == 200
    assert post(client, to_bytes(make_instance()), "application/dicom", accept=None).status_code == 200


def test_put_stores_then_replaces(client):
    ds = make_instance()
    first = post(client, to_bytes(ds), "application/dicom", method="PUT")
    assert first.status_code == 200
    ds.PatientName = "Replaced^Name"
    second = post(client, to_bytes(ds), "application/dicom", method="PUT", url=f"/v1/studies/{ds.StudyInstanceUID}")
    assert second.status_code == 200
    meta = client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata").json
    assert len(meta) == 1
    assert meta[0]["00100010"]["Value"] == [{"Alphabetic": "Replaced^Name"}]
    feed = client.get("/v2/changefeed").json
    assert [(e["action"], e["state"]) for e in feed] == [("create", "replaced"), ("update", "current")]


def test_bearer_token_is_accepted(client):
    response = client.post(
        "/v2/studies",
        data=to_bytes(make_instance()),
        headers={"Content-Type": "application/dicom", "Authorization": "Bearer abc.def"},
    )
    assert response.status_code == 200


def test_sample_file_stored_byte_for_byte(client, app):
    data = sample("blue-circle.dcm").read_bytes()
    assert post(client, data, "application/dicom").status_code == 200
    retrieved = client.get(
        f"/v2/studies/{STUDY_UID}/series/{SERIES_BLUE}/instances/{SOP_BLUE}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert retrieved.status_code == 200
    assert retrieved.data == data


def test_failed_index_write_leaves_no_blob(client, app, monkeypatch):
    store = app.extensions["dicomserver"].store
    index = app.extensions["dicomserver"].index

    def broken(*args, **kwargs):
        raise RuntimeError("simulated index failure")

    monkeypatch.setattr(index, "store_instance", broken)
    response = post(client, to_bytes(make_instance()), "application/dicom")
    assert response.status_code == 409
    assert failure_reasons(response) == [272]
    assert list(store.list()) == []


def test_oversized_instance_is_413(tmp_path):
    from dicomserver import Settings, create_app

    app = create_app(
        Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}", max_instance_bytes=500)
    )
    response = app.test_client().post(
        "/v2/studies", data=to_bytes(make_instance(rows=32, columns=32)), headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 413
    assert list(app.extensions["dicomserver"].store.list()) == []
