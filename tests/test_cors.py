"""CORS: browsers on the configured origins may call the API; nobody else gets the headers.

Off unless DICOMWEB_CORS_ORIGINS is set. Every answer to an allowed origin carries
Access-Control-Allow-Origin, errors included (a browser hides an error it may not read),
and preflights are answered without a token, since browsers never send one with them.
"""
from __future__ import annotations

import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings

ORIGIN = "https://viewer.example.org"
OTHER = "https://other.example.net"
EXPOSED = {"content-type", "content-location", "location", "warning", "content-range", "etag"}
STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


def names(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def cors_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def preflight(client, path: str, method: str = "POST", origin: str = ORIGIN):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, accept",
        },
    )


@pytest.fixture(params=["auth off", "auth on"])
def auth(request) -> dict:
    """The settings for authentication off, or on against the test identity provider."""
    return request.getfixturevalue("auth_settings") if request.param == "auth on" else {}


def test_allowed_origin_is_echoed_and_headers_are_exposed(app_factory):
    client = app_factory(cors_origins=(ORIGIN, OTHER)).test_client()
    for origin in (ORIGIN, OTHER):
        response = client.get("/v2/studies", headers={"Origin": origin})
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert names(response.headers.get("Access-Control-Expose-Headers")) >= EXPOSED


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://viewer.example.org.evil.example",
        "http://viewer.example.org",  # another scheme is another origin
        "https://viewer.example.org:8443",  # and so is another port
        "null",
    ],
)
def test_other_origins_get_no_allow_origin(app_factory, origin):
    client = app_factory(cors_origins=(ORIGIN,)).test_client()
    response = client.get("/v2/studies", headers={"Origin": origin})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in preflight(client, "/v2/studies", origin=origin).headers


def test_wildcard_allows_any_origin(app_factory):
    client = app_factory(cors_origins=("*",)).test_client()
    for origin in (ORIGIN, "https://anyone.example"):
        response = client.get("/v2/studies", headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert preflight(client, "/v2/studies", origin=origin).headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "path, method",
    [
        ("/v2/studies", "POST"),
        ("/v1/studies/1.2.3", "PUT"),
        ("/v2/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5", "DELETE"),
        ("/v2/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1", "GET"),
    ],
)
def test_preflight_is_answered_without_a_token(app_factory, auth, path, method):
    client = app_factory(cors_origins=(ORIGIN,), **auth).test_client()
    response = preflight(client, path, method)
    assert response.status_code in (200, 204), response.data
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert names(response.headers.get("Access-Control-Allow-Methods")) >= {"get", "post", "put", "delete", "options"}
    assert names(response.headers.get("Access-Control-Allow-Headers")) >= {"authorization", "accept", "content-type"}
    assert int(response.headers["Access-Control-Max-Age"]) > 0


def test_error_answers_carry_allow_origin(app_factory, monkeypatch):
    app = app_factory(cors_origins=(ORIGIN,))
    client = app.test_client()
    origin = {"Origin": ORIGIN}
    answers = {
        "400": client.get("/v2/studies?limit=many", headers=origin),
        "404": client.get("/v2/studies/1.2.3/metadata", headers=origin),
        "404 unversioned": client.get("/studies", headers=origin),
        "415": client.post("/v2/studies", data=b"x", headers={**origin, "Content-Type": "text/plain"}),
    }

    def broken() -> dict[str, str]:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(app.extensions["dicomserver"], "readiness", broken)
    answers["500"] = client.get("/readyz", headers=origin)
    for expected, response in answers.items():
        assert str(response.status_code) == expected.split()[0], (expected, response.data)
        assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN, expected
        assert names(response.headers.get("Access-Control-Expose-Headers")) >= EXPOSED, expected


def test_401_and_403_carry_allow_origin(app_factory, auth_settings, identity_provider):
    client = app_factory(cors_origins=(ORIGIN,), **auth_settings).test_client()
    unauthenticated = client.get("/v2/studies", headers={"Origin": ORIGIN})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers.get("Access-Control-Allow-Origin") == ORIGIN
    reader = bearer(identity_provider.token(roles=["globalReader"]))
    forbidden = client.post("/v2/studies", data=to_bytes(make_instance()), headers={"Origin": ORIGIN, **STOW, **reader})
    assert forbidden.status_code == 403
    assert forbidden.headers.get("Access-Control-Allow-Origin") == ORIGIN
    allowed = client.get("/v2/studies", headers={"Origin": ORIGIN, **reader})
    assert allowed.status_code == 200
    assert allowed.headers.get("Access-Control-Allow-Origin") == ORIGIN


def test_no_cors_headers_when_off(app_factory, auth):
    assert Settings().cors_origins == ()
    client = app_factory(**auth).test_client()
    origin = {"Origin": ORIGIN}
    for response in (
        client.get("/v2/studies", headers=origin),
        client.get("/v2/studies/1.2.3/metadata", headers=origin),
        client.get("/healthz", headers=origin),
        preflight(client, "/v2/studies"),
    ):
        assert cors_headers(response) == {}, response.request.path


def test_cors_origins_from_the_environment():
    assert Settings.from_env({"DICOMWEB_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    both = Settings.from_env({"DICOMWEB_CORS_ORIGINS": f"{ORIGIN}, {OTHER}"})
    assert both.cors_origins == (ORIGIN, OTHER)
    assert Settings.from_env({}).cors_origins == ()


def test_patch_is_allowed_for_extended_query_tags(app_factory):
    """PATCH /extendedquerytags/{tag} (query status) from a page: its preflight allows the method."""
    client = app_factory(cors_origins=(ORIGIN,)).test_client()
    response = preflight(client, "/v2/extendedquerytags/PatientWeight", method="PATCH")
    assert response.status_code == 200
    assert "patch" in names(response.headers.get("Access-Control-Allow-Methods"))
    answer = client.get("/v2/extendedquerytags", headers={"Origin": ORIGIN})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "erroneous-dicom-attributes" in names(answer.headers.get("Access-Control-Expose-Headers"))
