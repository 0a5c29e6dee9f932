"""Bearer-token authentication and role-based authorization, against a real identity provider.

Authentication is off unless DICOMWEB_AUTH_AUTHORITY is set; then every DICOMweb route needs
a valid token whose roles grant the route's action (read, write, delete). The routes are taken
from the app's URL map, so a route added later is checked without editing this file.
"""
from __future__ import annotations

import json
import logging
import re
import time

import pytest
from auth_fixtures import (
    AUDIENCE,
    JWKS_COOLDOWN,
    IdentityProvider,
    advance_jwks_clock,
    b64url,
    bearer,
    hs256_signed_with_public_key,
    none_token,
    signature_of,
    stranger_rsa_key,
)
from dicom_factory import make_instance, to_bytes

from dicomserver import ConfigError, Settings

ACTIONS = {"GET": "read", "POST": "write", "PUT": "write", "DELETE": "delete", "PATCH": "manageExtendedQueryTags"}
XQT = "manageExtendedQueryTags"


def action_of(method: str, rule) -> str:
    """The action the spec gives a route: the audit trail needs `audit`, changes to extended query
    tags `manageExtendedQueryTags`, an export `export`, the rest goes by method."""
    if "/extendedquerytags" in rule.rule and method != "GET":
        return XQT
    if rule.rule.endswith("/export"):
        return "export"
    if "/webhooks" in rule.rule:
        return "admin"
    if is_worklist(rule.rule):  # unsubscribing (DELETE) changes subscriptions, no data: write
        return "read" if method == "GET" else "write"
    return "audit" if "/audit" in rule.rule else ACTIONS[method]
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


def challenge(authority: str, *, invalid_token: bool = False, audience: str = AUDIENCE) -> str:
    value = f'Bearer authorization_uri="{authority}", resource_id="{audience}", realm="{audience}"'
    return value + ', error="invalid_token"' if invalid_token else value


def api_routes(app) -> list[tuple[str, object]]:
    """(method, rule) for every versioned route and method the app serves (HEAD and OPTIONS aside);
    the partitioned variants are the same views (tests/test_partitions.py checks them with partitions on)."""
    found = []
    for rule in app.url_map.iter_rules():
        if "api_version" not in rule.arguments or "partition_name" in rule.arguments:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            assert method in ACTIONS, f"{method} {rule.rule}: which action does it need? Add it to the spec and ACTIONS"
            found.append((method, rule))
    return found


def fill(rule, version: str, values: dict[str, str]) -> str:
    path = rule.rule.replace("<any(v1, v2):api_version>", version)
    return re.sub(r"<(?:[^:<>]+:)?(\w+)>", lambda m: values[m.group(1)], path)


def seed(client, idp: IdentityProvider) -> dict[str, str]:
    """Store a fresh instance (as an admin); the values that fill a route's parameters."""
    ds = make_instance(rows=8, columns=8)
    response = client.post("/v2/studies", data=to_bytes(ds), headers={**DICOM, **bearer(idp.token(roles=["globalAdmin"]))})
    assert response.status_code == 200, response.data
    return {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        "frames": "1",
        "tag_path": "7FE00010",
        "record_id": "1",
        "operation_id": "0" * 32,
        "webhook_id": "0" * 32,
        "uid": "1.2.826.0.1.3680043.10.1011.77.1",  # a workitem (none exists: the answer is 404 once allowed)
        "ae_title": "WATCHER",
    }


def is_worklist(path: str) -> bool:
    """UPS-RS: `write` routes whose answers are the worklist's own (404 for the seed's workitem,
    which does not exist): these tests check they are let through; test_workitems.py checks the rest."""
    return "/workitems" in path or "/subscribers/" in path


def is_bulk_update(path: str) -> bool:
    """Bulk update is a `write` route whose answer is an operation (202, or 409 while one runs,
    404 on v1): these tests check it is let through; test_bulk_update.py checks the rest."""
    return path.lower().endswith("/$bulkupdate")


def body_for(method: str, path: str, values: dict[str, str]) -> bytes | None:
    """For STOW routes, a new instance of the path's study (so an unchecked request would store it);
    for bulk update, a change of the path's study."""
    if is_bulk_update(path):
        change = {"00081030": {"vr": "LO", "Value": ["changed"]}}
        return json.dumps({"studyInstanceUids": [values["study"]], "changeDataset": change}).encode()
    if method in ("POST", "PUT"):
        return to_bytes(make_instance(study=values["study"]))
    return None


def call(client, method: str, path: str, token: str | None, values: dict[str, str]):
    headers = dict(DICOM) if method in ("POST", "PUT") else {}
    if is_bulk_update(path):
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers.update(bearer(token))
    return client.open(path, method=method, data=body_for(method, path, values), headers=headers)


def mismatch(method: str, path: str, response, expected: int | None) -> list[str]:
    """[] when the status is `expected`, or (None) when the request was let through (not 401/403)."""
    if expected is None and response.status_code not in (401, 403):
        return []
    if response.status_code == expected:
        return []
    return [f"{method} {path}: {response.status_code} {response.data[:80]!r}"]


def test_the_url_map_has_every_kind_of_route(auth_app):
    paths = {rule.rule.split("api_version>", 1)[-1] for _, rule in api_routes(auth_app)}
    for expected in ("/studies", "/changefeed", "/changefeed/latest", "/studies/<study>/thumbnail"):
        assert expected in paths
    assert {method for method, _ in api_routes(auth_app)} == {"GET", "POST", "PUT", "DELETE", "PATCH"}
    assert len(api_routes(auth_app)) >= 30


def test_every_route_without_a_token_is_401_with_the_challenge(auth_client, auth_app, identity_provider):
    values = seed(auth_client, identity_provider)
    wrong = []
    for method, rule in api_routes(auth_app):
        for version in ("v1", "v2"):
            path = fill(rule, version, values)
            response = call(auth_client, method, path, None, values)
            if response.status_code != 401 or response.data != b"":
                wrong.append(f"{method} {path}: {response.status_code} {response.data[:80]!r}")
            elif response.headers.get("WWW-Authenticate") != challenge(identity_provider.issuer):
                wrong.append(f"{method} {path}: WWW-Authenticate {response.headers.get('WWW-Authenticate')!r}")
    assert wrong == []


def test_a_reader_reads_every_get_route_and_may_not_write_or_delete(auth_client, auth_app, identity_provider):
    values = seed(auth_client, identity_provider)
    reader = identity_provider.token(roles=["globalReader"])
    wrong = []
    for method, rule in api_routes(auth_app):
        for version in ("v1", "v2"):
            path = fill(rule, version, values)
            response = call(auth_client, method, path, reader, values)
            if action_of(method, rule) == "read":
                if response.status_code in (401, 403):
                    wrong.append(f"{method} {path}: {response.status_code}")
            elif response.status_code != 403 or response.data.strip() != b"Authorization failed.":
                wrong.append(f"{method} {path}: {response.status_code} {response.data[:80]!r}")
            elif not response.headers["Content-Type"].startswith("text/plain"):
                wrong.append(f"{method} {path}: Content-Type {response.headers['Content-Type']}")
    assert wrong == []
    # The instance is still there: nothing was deleted or replaced.
    study = auth_client.get(f"/v2/studies/{values['study']}/instances", headers=bearer(reader))
    assert study.status_code == 200 and len(study.json) == 1


def test_a_writer_stores_on_every_stow_route_and_may_not_delete(auth_client, auth_app, identity_provider):
    values = seed(auth_client, identity_provider)
    writer = identity_provider.token(roles=["globalWriter"])
    wrong = []
    for method, rule in api_routes(auth_app):
        path = fill(rule, "v2", values)
        response = call(auth_client, method, path, writer, values)
        stored = None if is_bulk_update(path) or is_worklist(path) else 200
        wrong += mismatch(method, path, response, {"read": None, "write": stored, "delete": 403, "audit": 403, XQT: 403,
                                                      "export": 403, "admin": 403}[
            action_of(method, rule)])
    assert wrong == []


def test_a_deleter_deletes_on_every_delete_route_and_may_not_store(auth_client, auth_app, identity_provider):
    deleter = identity_provider.token(roles=["globalDeleter"])
    wrong = []
    for method, rule in api_routes(auth_app):
        values = seed(auth_client, identity_provider)
        path = fill(rule, "v2", values)
        response = call(auth_client, method, path, deleter, values)
        wrong += mismatch(method, path, response, {"read": None, "write": 403, "delete": 204, "audit": 403, XQT: 403,
                                                      "export": 403, "admin": 403}[
            action_of(method, rule)])
    assert wrong == []


def test_an_admin_may_do_anything(auth_client, auth_app, identity_provider):
    admin = identity_provider.token(roles=["globalAdmin"])
    wrong = []
    for method, rule in api_routes(auth_app):
        for version in ("v1", "v2"):
            values = seed(auth_client, identity_provider)
            path = fill(rule, version, values)
            response = call(auth_client, method, path, admin, values)
            stored = None if is_bulk_update(path) or is_worklist(path) else 200
            wrong += mismatch(method, path, response, {"read": None, "write": stored, "delete": 204, "audit": None, XQT: None,
                                                      "export": None, "admin": None}[
                action_of(method, rule)])
    assert wrong == []


def test_an_auditor_reads_the_audit_trail_and_nothing_else(auth_client, auth_app, identity_provider):
    values = seed(auth_client, identity_provider)
    auditor = identity_provider.token(roles=["globalAuditor"])
    wrong = []
    for method, rule in api_routes(auth_app):
        path = fill(rule, "v2", values)
        response = call(auth_client, method, path, auditor, values)
        wrong += mismatch(method, path, response, None if action_of(method, rule) == "audit" else 403)
    assert wrong == []
    assert auth_client.get("/v2/audit", headers=bearer(auditor)).status_code == 200


def test_head_needs_read_like_get(auth_client, identity_provider):
    assert auth_client.head("/v2/studies").status_code == 401
    assert auth_client.head("/v2/studies", headers=bearer(identity_provider.token(roles=["nobody"]))).status_code == 403
    assert auth_client.head("/v2/studies", headers=bearer(identity_provider.token())).status_code == 200


def test_health_endpoints_need_no_token(auth_client):
    assert auth_client.get("/healthz").status_code == 200
    assert auth_client.get("/readyz").status_code == 200


def test_options_needs_no_token(auth_client, auth_app):
    for _, rule in api_routes(auth_app):
        path = fill(rule, "v2", {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1", "tag_path": "7FE00010", "record_id": "1",
                                  "operation_id": "0" * 32, "webhook_id": "0" * 32, "uid": "1.2.3.6",
                                  "ae_title": "W"})
        response = auth_client.options(path)
        assert response.status_code not in (401, 403), path


def test_unversioned_paths_stay_404_without_a_token(auth_client):
    for method in ("GET", "POST", "DELETE"):
        response = auth_client.open("/studies", method=method)
        assert response.status_code == 404, method
    assert auth_client.get("/studies/1.2.3/series").status_code == 404


def test_other_schemes_are_401(auth_client, identity_provider):
    token = identity_provider.token(roles=["globalAdmin"])
    for value in (f"Token {token}", token, "Bearer", "Bearer "):
        response = auth_client.get("/v2/studies", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.data == b""
        assert response.headers["WWW-Authenticate"].startswith(challenge(identity_provider.issuer)), value


def test_basic_credentials_get_the_challenge_without_an_error(auth_client, identity_provider):
    # RFC 6750 §3.1: no error code when the client used an unsupported authentication method.
    response = auth_client.get("/v2/studies", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == challenge(identity_provider.issuer)


def _tampered_payload(idp: IdentityProvider) -> str:
    header, _, signature = idp.token(roles=["globalReader"]).split(".")
    return f"{header}.{b64url(json.dumps(idp.claims(roles=['globalAdmin'])).encode())}.{signature}"


INVALID_TOKENS = {
    "expired": lambda idp: idp.token(roles=["globalAdmin"], exp=int(time.time()) - 600),
    "not yet valid": lambda idp: idp.token(roles=["globalAdmin"], nbf=int(time.time()) + 600),
    "no exp": lambda idp: idp.token(roles=["globalAdmin"], exp=None),
    "wrong issuer": lambda idp: idp.token(roles=["globalAdmin"], iss="https://login.example.org/other"),
    "issuer below the authority": lambda idp: idp.token(roles=["globalAdmin"], iss=idp.issuer + "/other"),
    "wrong audience": lambda idp: idp.token(roles=["globalAdmin"], aud="other-api"),
    "no audience": lambda idp: idp.token(roles=["globalAdmin"], aud=None),
    "alg none": lambda idp: none_token(idp.claims(roles=["globalAdmin"]), kid=idp.kid()),
    "HS256 keyed with the public key": lambda idp: hs256_signed_with_public_key(
        idp.claims(roles=["globalAdmin"]), idp.public_pem(), kid=idp.kid()
    ),
    "a stranger's key under a known kid": lambda idp: idp.token(roles=["globalAdmin"], key=stranger_rsa_key()),
    "unknown kid": lambda idp: idp.token(roles=["globalAdmin"], kid="no-such-key"),
    "tampered payload": _tampered_payload,
    "signature removed": lambda idp: idp.token(roles=["globalAdmin"]).rsplit(".", 1)[0] + ".",
    "garbage": lambda idp: "garbage",
    "three garbage segments": lambda idp: "a.b.c",
}


@pytest.mark.parametrize("kind", list(INVALID_TOKENS))
def test_invalid_token_is_401_invalid_token(auth_client, identity_provider, kind):
    token = INVALID_TOKENS[kind](identity_provider)
    response = auth_client.get("/v2/studies", headers=bearer(token))
    assert response.status_code == 401, response.data
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == challenge(identity_provider.issuer, invalid_token=True)


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_asymmetric_algorithms_are_accepted(auth_client, identity_provider, alg):
    response = auth_client.get("/v2/studies", headers=bearer(identity_provider.token(alg=alg)))
    assert response.status_code == 200, response.data


def test_any_configured_audience_is_accepted(app_factory, auth_settings, identity_provider):
    client = app_factory(**{**auth_settings, "auth_audiences": ("dicom-api", "viewer-api")}).test_client()
    for aud in ("dicom-api", "viewer-api", ["someone-else", "viewer-api"]):
        assert client.get("/v2/studies", headers=bearer(identity_provider.token(aud=aud))).status_code == 200, aud
    refused = client.get("/v2/studies", headers=bearer(identity_provider.token(aud="third-api")))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == challenge(identity_provider.issuer, invalid_token=True, audience="dicom-api")


def test_discovery_and_keys_are_fetched_when_first_needed_then_cached(auth_client, identity_provider):
    assert (identity_provider.discovery_requests, identity_provider.jwks_requests) == (0, 0)
    assert auth_client.get("/v2/studies").status_code == 401  # no token: nothing to fetch
    assert (identity_provider.discovery_requests, identity_provider.jwks_requests) == (0, 0)
    for alg in ("RS256", "ES256", "RS256"):
        assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token(alg=alg))).status_code == 200
    assert (identity_provider.discovery_requests, identity_provider.jwks_requests) == (1, 1)


def test_discovery_issuer_must_be_the_authority(auth_client, identity_provider):
    identity_provider.discovery_overrides["issuer"] = "https://login.example.org/someone-else"
    response = auth_client.get("/v2/studies", headers=bearer(identity_provider.token()))
    assert response.status_code in (401, 503)
    assert identity_provider.jwks_requests == 0  # keys named by a document for another issuer are not used


def test_discovery_issuer_may_differ_by_a_trailing_slash(auth_client, identity_provider):
    identity_provider.discovery_overrides["issuer"] = identity_provider.issuer + "/"
    assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token())).status_code == 200


def test_rotated_keys_are_fetched_without_a_restart(auth_client, identity_provider, monkeypatch):
    old = identity_provider.token()
    assert auth_client.get("/v2/studies", headers=bearer(old)).status_code == 200
    fetched = identity_provider.jwks_requests

    identity_provider.rotate()
    advance_jwks_clock(monkeypatch, JWKS_COOLDOWN + 1)
    new = identity_provider.token()
    assert auth_client.get("/v2/studies", headers=bearer(new)).status_code == 200
    assert identity_provider.jwks_requests == fetched + 1
    assert auth_client.get("/v2/studies", headers=bearer(old)).status_code == 401  # its key is gone


def test_unknown_kids_refetch_the_keys_at_most_once_per_cooldown(auth_client, identity_provider, monkeypatch):
    assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token())).status_code == 200
    assert identity_provider.jwks_requests == 1
    for n in range(5):
        assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token(kid=f"forged-{n}"))).status_code == 401
    assert identity_provider.jwks_requests == 1  # within the cool-down of the first fetch
    advance_jwks_clock(monkeypatch, JWKS_COOLDOWN + 1)
    for n in range(5):
        assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token(kid=f"later-{n}"))).status_code == 401
    assert identity_provider.jwks_requests == 2


def test_identity_provider_unreachable_is_503(auth_client, identity_provider):
    token = identity_provider.token()
    identity_provider.stop()
    response = auth_client.get("/v2/studies", headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.get_data(as_text=True)
    assert text.strip()
    assert "Traceback" not in text and "jwt" not in text and "urllib" not in text.lower()
    assert "pyjwt" not in text.lower() and "pyjwk" not in text.lower()
    assert auth_client.get("/healthz").status_code == 200


def test_cached_keys_outlive_an_outage(auth_client, identity_provider):
    assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token())).status_code == 200
    identity_provider.stop()
    assert auth_client.get("/v2/studies", headers=bearer(identity_provider.token(sub="user-2"))).status_code == 200


def test_roles_may_be_one_string(auth_client, identity_provider):
    reader = bearer(identity_provider.token(roles="globalReader"))
    assert auth_client.get("/v2/studies", headers=reader).status_code == 200
    response = auth_client.post("/v2/studies", data=to_bytes(make_instance()), headers={**DICOM, **reader})
    assert response.status_code == 403


@pytest.mark.parametrize("roles", [["somebodyElse"], [], None], ids=["unknown", "empty", "no claim"])
def test_roles_that_grant_nothing_are_403(auth_client, identity_provider, roles):
    response = auth_client.get("/v2/studies", headers=bearer(identity_provider.token(roles=roles)))
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.data.strip() == b"Authorization failed."


def test_roles_claim_is_configurable(app_factory, auth_settings, identity_provider):
    client = app_factory(**auth_settings, auth_roles_claim="app_roles").test_client()
    theirs = bearer(identity_provider.token(roles=None, app_roles=["globalWriter"]))
    response = client.post("/v2/studies", data=to_bytes(make_instance()), headers={**DICOM, **theirs})
    assert response.status_code == 200
    # The default claim means nothing now.
    assert client.get("/v2/studies", headers=bearer(identity_provider.token(roles=["globalAdmin"]))).status_code == 403


def _roles_file(tmp_path, roles: list[dict]) -> str:
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({"roles": roles}))
    return str(path)


def test_not_data_actions_are_taken_away(app_factory, auth_settings, identity_provider, tmp_path):
    roles = [{"name": "allButDelete", "dataActions": ["*"], "notDataActions": ["delete"], "scopes": ["/"]}]
    client = app_factory(**auth_settings, auth_roles_file=_roles_file(tmp_path, roles)).test_client()
    token = bearer(identity_provider.token(roles=["allButDelete"]))
    ds = make_instance()
    assert client.post("/v2/studies", data=to_bytes(ds), headers={**DICOM, **token}).status_code == 200
    assert client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata", headers=token).status_code == 200
    deleted = client.delete(f"/v2/studies/{ds.StudyInstanceUID}", headers=token)
    assert deleted.status_code == 403
    assert deleted.data.strip() == b"Authorization failed."
    # The default roles are not there when a file replaces them.
    assert client.get("/v2/studies", headers=bearer(identity_provider.token(roles=["globalAdmin"]))).status_code == 403


def test_actions_are_the_union_over_the_roles(app_factory, auth_settings, identity_provider, tmp_path):
    roles = [
        {"name": "allButDelete", "dataActions": ["*"], "notDataActions": ["delete"], "scopes": ["/"]},
        {"name": "deleteOnly", "dataActions": ["delete"], "notDataActions": [], "scopes": ["/"]},
    ]
    client = app_factory(**auth_settings, auth_roles_file=_roles_file(tmp_path, roles)).test_client()
    ds = make_instance()
    token = bearer(identity_provider.token(roles=["allButDelete", "deleteOnly"]))
    assert client.post("/v2/studies", data=to_bytes(ds), headers={**DICOM, **token}).status_code == 200
    assert client.delete(f"/v2/studies/{ds.StudyInstanceUID}", headers=token).status_code == 204
    only_delete = bearer(identity_provider.token(roles=["deleteOnly"]))
    assert client.get("/v2/studies", headers=only_delete).status_code == 403


def test_default_roles_combine(auth_client, identity_provider):
    ds = make_instance()
    both = bearer(identity_provider.token(roles=["globalWriter", "globalDeleter"]))
    assert auth_client.post("/v2/studies", data=to_bytes(ds), headers={**DICOM, **both}).status_code == 200
    assert auth_client.delete(f"/v2/studies/{ds.StudyInstanceUID}", headers=both).status_code == 204


def test_authentication_is_off_by_default(app_factory):
    assert Settings().auth_authority is None
    client = app_factory().test_client()
    ds = make_instance()
    assert client.post("/v2/studies", data=to_bytes(ds), headers=DICOM).status_code == 200
    assert client.get("/v2/studies", headers={"Authorization": "Bearer garbage"}).status_code == 200
    assert client.get(f"/v1/studies/{ds.StudyInstanceUID}/metadata").status_code == 200
    response = client.delete(f"/v2/studies/{ds.StudyInstanceUID}")
    assert response.status_code == 204
    assert "WWW-Authenticate" not in response.headers


def test_startup_refuses_an_http_authority(app_factory):
    with pytest.raises(ConfigError, match="DICOMWEB_AUTH_AUTHORITY"):
        app_factory(auth_authority="http://login.example.org/tenant", auth_audiences=(AUDIENCE,))
    with pytest.raises(ConfigError, match="DICOMWEB_AUTH_AUTHORITY"):
        Settings.from_env({"DICOMWEB_AUTH_AUTHORITY": "http://login.example.org/tenant", "DICOMWEB_AUTH_AUDIENCE": AUDIENCE})


def test_startup_accepts_https_without_contacting_the_authority(app_factory):
    authority = "https://login.example.org/tenant/v2.0"
    client = app_factory(auth_authority=authority, auth_audiences=(AUDIENCE,)).test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/v2/studies")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge(authority)


def test_auth_settings_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "DICOMWEB_AUTH_AUTHORITY": "http://127.0.0.1:9999",
            "DICOMWEB_AUTH_AUDIENCE": "dicom-api, viewer-api",
            "DICOMWEB_AUTH_ALLOW_HTTP": "1",
            "DICOMWEB_AUTH_ROLES_CLAIM": "app_roles",
            "DICOMWEB_AUTH_ROLES_FILE": str(tmp_path / "roles.json"),
        }
    )
    assert settings.auth_authority == "http://127.0.0.1:9999"
    assert settings.auth_audiences == ("dicom-api", "viewer-api")
    assert settings.auth_allow_http is True
    assert settings.auth_roles_claim == "app_roles"
    assert settings.auth_roles_file == str(tmp_path / "roles.json")
    defaults = Settings.from_env({})
    assert (defaults.auth_authority, defaults.auth_audiences, defaults.auth_allow_http) == (None, (), False)
    assert (defaults.auth_roles_claim, defaults.auth_roles_file) == ("roles", None)


def test_tokens_never_reach_the_logs(auth_client, app_factory, identity_provider, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    idp = identity_provider
    sent = [
        idp.token(roles=["globalReader"]),
        idp.token(roles=["globalAdmin"], exp=int(time.time()) - 600),
        idp.token(roles=["globalAdmin"], aud="other-api"),
        idp.token(roles=["globalAdmin"], kid="no-such-key"),
        _tampered_payload(idp),
        none_token(idp.claims(roles=["globalAdmin"]), kid=idp.kid()),
        "garbage-token-value",
    ]
    for token in sent:
        auth_client.get("/v2/studies", headers=bearer(token))
    writer_denied = idp.token(roles=["globalReader"], sub="reader-2")
    sent.append(writer_denied)
    auth_client.post("/v2/studies", data=to_bytes(make_instance()), headers={**DICOM, **bearer(writer_denied)})

    down = IdentityProvider()
    try:
        client = app_factory(auth_authority=down.issuer, auth_audiences=(AUDIENCE,), auth_allow_http=True).test_client()
        unreachable = down.token()
        down.stop()
        sent.append(unreachable)
        assert client.get("/v2/studies", headers=bearer(unreachable)).status_code == 503
    finally:
        down.stop()

    secrets = set(sent) | {signature_of(t) for t in sent if signature_of(t)}
    formatter = logging.Formatter()
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(record.msg)
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{record.name}: {record.getMessage()[:200]}"
    assert caplog.records  # the refusals were logged, only without the tokens
    out, err = capfd.readouterr()  # handlers of their own (e.g. a JSON access log) write here
    assert not [s for s in secrets if s in out or s in err]
