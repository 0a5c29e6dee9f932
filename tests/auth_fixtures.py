"""A real OpenID Connect identity provider for the tests, and apps that trust it.

`IdentityProvider` serves a discovery document and a JWKS over HTTP on a free loopback
port (a thread, started and stopped by the fixture), and mints tokens with its own keys:
RSA 2048 (RS256, and another for PS256), EC P-256 (ES256) and Ed25519 (EdDSA), each with
a `kid`. The server fetches the keys as it would from a real provider, so key rotation,
caching and an outage are tested end to end. `none_token` and `hs256_signed_with_public_key`
build the hostile tokens PyJWT refuses to make.

`app_factory` builds apps on SQLite + local disk in tmp_path (its id is "sqlite", so
`-k sqlite` selects these tests) and shuts their index down after.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dicomserver import Settings, close_app, create_app

AUDIENCE = "dicom-api"
#: PyJWKClient's default cool-down between forced JWKS refreshes (seconds).
JWKS_COOLDOWN = 30
_UNSET: Any = object()
_FAMILY = {"RS": "rsa", "PS": "ps", "ES": "ec", "Ed": "ed"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def none_token(claims: dict[str, Any], *, kid: str | None = None) -> str:
    """An unsigned token: header {"alg": "none"}, an empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{_segment(header)}.{_segment(claims)}."


def hs256_signed_with_public_key(claims: dict[str, Any], public_pem: bytes, *, kid: str | None = None) -> str:
    """The algorithm-confusion attack: HMAC-SHA256 keyed with the RSA public key's PEM."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(public_pem, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def signature_of(token: str) -> str:
    return token.rsplit(".", 1)[-1]


class _Key:
    _serial = itertools.count(1)

    def __init__(self, family: str):
        if family in ("rsa", "ps"):
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
            if family == "ps":  # a JWK without "alg" is taken for RS256; the RS256 key has none, as Entra ID's
                jwk["alg"] = "PS256"
        elif family == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.kid = f"{family}-key-{next(self._serial)}"
        self.jwk = {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@functools.cache
def _first_keys() -> dict[str, _Key]:
    """Every provider starts with these (RSA key generation is slow); rotate() makes new ones."""
    return IdentityProvider._new_keys()


class IdentityProvider:
    """Discovery at /.well-known/openid-configuration, keys at /keys; tokens minted here."""

    def __init__(self) -> None:
        self.keys = dict(_first_keys())
        #: Entries that replace the discovery document's (e.g. a mismatched "issuer").
        self.discovery_overrides: dict[str, Any] = {}
        self.jwks_requests = 0
        self.discovery_requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    provider.discovery_requests += 1
                    body = provider.discovery()
                elif self.path == "/keys":
                    provider.jwks_requests += 1
                    body = provider.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="identity-provider", daemon=True
        )
        self._thread.start()
        self._running = True

    @staticmethod
    def _new_keys() -> dict[str, _Key]:
        return {family: _Key(family) for family in ("rsa", "ps", "ec", "ed")}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/keys",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            **self.discovery_overrides,
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self.keys.values()]}

    def kid(self, alg: str = "RS256") -> str:
        return self.keys[_FAMILY[alg[:2]]].kid

    def public_pem(self) -> bytes:
        """The RSA signing key's public half, as a PEM (what an attacker can download)."""
        return self.keys["rsa"].public_pem()

    def claims(
        self,
        *,
        roles: Any = ("globalReader",),
        sub: str = "user-1",
        aud: Any = AUDIENCE,
        iss: str | None = None,
        exp: Any = _UNSET,
        nbf: int | None = None,
        **claims: Any,
    ) -> dict[str, Any]:
        """The payload `token` signs: exp defaults to 5 minutes from now; None leaves a claim out."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": iss or self.issuer, "sub": sub, "iat": now}
        if aud is not None:
            payload["aud"] = aud
        if roles is not None:
            payload["roles"] = list(roles) if isinstance(roles, (list, tuple)) else roles
        if exp is _UNSET:
            exp = now + 300
        if exp is not None:
            payload["exp"] = exp
        if nbf is not None:
            payload["nbf"] = nbf
        payload.update(claims)
        return payload

    def token(self, *, alg: str = "RS256", kid: str | None = None, key: Any = None, **claims: Any) -> str:
        """A token signed by this provider's current key for `alg` (or by `key`, e.g. a stranger's),
        over the payload `claims(**claims)` makes."""
        payload = self.claims(**claims)
        signing_key = key if key is not None else self.keys[_FAMILY[alg[:2]]].private
        return jwt.encode(payload, signing_key, algorithm=alg, headers={"kid": kid or self.kid(alg)})

    def rotate(self) -> None:
        """New keys with new kids; the old ones leave the JWKS."""
        self.keys = self._new_keys()

    def stop(self) -> None:
        """The provider goes away: its port refuses connections from now on."""
        if self._running:
            self._running = False
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)


def stranger_rsa_key() -> Any:
    """A private key the provider never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def advance_jwks_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move PyJWKClient's clock past its cool-down, so an unknown kid re-fetches the JWKS now.

    Only the module jwt.jwks_client sees the shifted clock (the JWKS cache's lifespan does not).
    """
    import jwt.jwks_client

    real = time.monotonic
    monkeypatch.setattr(jwt.jwks_client, "time", types.SimpleNamespace(monotonic=lambda: real() + seconds))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def identity_provider():
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(params=["sqlite"])
def app_factory(request, tmp_path):
    """build(**settings) -> a testing app on SQLite + local disk, in a directory of its own."""
    apps = []

    def build(**overrides: Any):
        where = tmp_path / f"app{len(apps)}"
        settings = Settings(
            blobstore_url=str(where / "blobs"), database_url=f"sqlite:///{where / 'index.db'}", **overrides
        )
        where.mkdir()
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        close_app(app)


@pytest.fixture
def auth_settings(identity_provider) -> dict[str, Any]:
    """The settings that turn authentication on against the test provider."""
    return {"auth_authority": identity_provider.issuer, "auth_audiences": (AUDIENCE,), "auth_allow_http": True}


@pytest.fixture
def auth_app(app_factory, auth_settings):
    return app_factory(**auth_settings)


@pytest.fixture
def auth_client(auth_app):
    return auth_app.test_client()
