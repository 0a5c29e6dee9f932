"""Who is calling and what they may do: bearer tokens, roles and data actions.

As the reference server does it: an OIDC issuer (DICOMWEB_AUTH_AUTHORITY) signs JWTs
for an audience; the token's roles claim names roles; a roles file (the reference's
roles.json format) maps each role to data actions (`read`, `write`, `delete`, ...); each
route needs one action. Signatures are checked by PyJWT against the issuer's JWKS
(found through its discovery document, cached, re-fetched for an unknown key id with
PyJWT's cool-down), with asymmetric algorithms only, so neither `alg: none` nor an
HMAC "signed" with a public key can pass. For deployments without an identity
provider, API keys (DICOMWEB_AUTH_TOKENS_FILE) are long random strings stored only as
SHA-256 hashes, each with a name and roles. Off unless one of the two is configured.

Nothing here logs a token: failures are logged by their reason alone.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jwt
from jwt import PyJWKClient

from .errors import Forbidden, IdentityProviderUnavailable, Unauthenticated
from .settings import ConfigError, Settings

log = logging.getLogger(__name__)

#: The data actions of the reference server, `audit` (reading the audit trail at /audit) and `admin`
#: (webhook subscriptions at /webhooks); "*" in a roles file grants all of them.
ACTIONS = frozenset({"read", "write", "delete", "manageExtendedQueryTags", "export", "audit", "admin"})
#: Signature algorithms accepted: asymmetric only (never "none", never HMAC).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Seconds of clock difference tolerated on exp and nbf.
LEEWAY = 60
#: How long the JWKS is cached, and how soon an unknown key id may fetch it again.
JWKS_LIFESPAN = 300
JWKS_COOLDOWN = 30
#: After a failed discovery fetch, requests fail fast (503) for this long instead of queueing.
DISCOVERY_RETRY_AFTER = 5
_FETCH_TIMEOUT = 10


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who (for the audit trail) and which data actions they have."""

    subject: str
    roles: frozenset[str]
    actions: frozenset[str]

    def allows(self, action: str) -> bool:
        return action in self.actions


#: The caller when authentication is off: every action, no identity.
ANONYMOUS = Principal("anonymous", frozenset(), ACTIONS)


class Roles:
    """Roles → data actions, from a roles file in the reference server's format."""

    def __init__(self, definitions: dict[str, frozenset[str]]):
        self._actions = definitions

    @classmethod
    def load(cls, path: str | None) -> Roles:
        """Read `path` (None: the shipped dicomserver/roles.json); ConfigError if malformed."""
        source = path or "the default roles file"
        try:
            if path is None:
                text = resources.files("dicomserver").joinpath("roles.json").read_text()
            else:
                with open(path, encoding="utf-8") as fp:
                    text = fp.read()
            return cls(_parse_roles(json.loads(text)))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"DICOMWEB_AUTH_ROLES_FILE={source!r} is unusable: {exc}") from None

    def actions(self, roles: Iterable[str]) -> frozenset[str]:
        granted: set[str] = set()
        for role in roles:
            granted |= self._actions.get(role, frozenset())
        return frozenset(granted)


def _parse_roles(document: Any) -> dict[str, frozenset[str]]:
    definitions: dict[str, frozenset[str]] = {}
    for role in document["roles"]:
        allowed = _action_set(role.get("dataActions", []))
        denied = _action_set(role.get("notDataActions", []))
        definitions[str(role["name"])] = allowed - denied
    return definitions


def _action_set(names: list[str]) -> frozenset[str]:
    unknown = [n for n in names if n != "*" and n not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown data action(s) {unknown}; known: *, {', '.join(sorted(ACTIONS))}")
    return ACTIONS if "*" in names else frozenset(names)


#: What an API key starts with (so a log scanner or a person can tell one from a JWT).
API_KEY_PREFIX = "dcm_"


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    roles: tuple[str, ...]


class ApiKeys:
    """API keys by hash, from a JSON file: {"keys": [{"name", "sha256", "roles"}]}.

    The file is read again when it changes, so `dicom create-api-key` needs no restart.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: tuple[ApiKey, ...] = ()
        self._lock = threading.Lock()
        self._reload()  # a malformed file stops start-up

    def find(self, key: str) -> ApiKey | None:
        """The entry whose hash matches `key` (compared in constant time)."""
        self._reload()
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = None
        for entry in self._keys:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def _reload(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._stamp = (), None
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            try:
                self._keys = tuple(read_api_keys(self.path))
            except ConfigError as exc:
                if self._stamp is None:
                    raise  # at start-up a broken file stops the server
                log.error("%s; the keys read before stay in use", exc)  # a half-edited file
            self._stamp = stamp


def read_api_keys(path: str) -> list[ApiKey]:
    try:
        with open(path, encoding="utf-8") as fp:
            document = json.load(fp)
        return [
            ApiKey(str(k["name"]), str(k["sha256"]).lower(), tuple(str(r) for r in k.get("roles", [])))
            for k in document.get("keys", [])
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"DICOMWEB_AUTH_TOKENS_FILE={path!r} is unusable: {exc}") from None


def create_api_key(path: str, name: str, roles: list[str]) -> str:
    """Add a new key to the file (created if absent) and return it; only its hash is kept."""
    keys = read_api_keys(path) if os.path.exists(path) else []
    if any(k.name == name for k in keys):
        raise ValueError(f"an API key named {name!r} exists already")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    keys.append(ApiKey(name, hashlib.sha256(key.encode()).hexdigest(), tuple(roles)))
    document = {"keys": [{"name": k.name, "sha256": k.sha256, "roles": list(k.roles)} for k in keys]}
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, encoding="utf-8") as tmp:
        json.dump(document, tmp, indent=2)
        tmp.write("\n")
    os.chmod(tmp.name, 0o600)
    os.replace(tmp.name, path)
    return key


class Authenticator:
    """Turns an Authorization header into a Principal, or says why it cannot."""

    def __init__(self, settings: Settings):
        self.authority = (settings.auth_authority or "").rstrip("/")
        self.audiences = settings.auth_audiences
        self.roles_claim = settings.auth_roles_claim
        self.roles = Roles.load(settings.auth_roles_file)
        self.api_keys = ApiKeys(settings.auth_tokens_file) if settings.auth_tokens_file else None
        self.enabled = bool(self.authority) or self.api_keys is not None
        self._jwks: PyJWKClient | None = None
        self._lock = threading.Lock()
        self._discovery_failed_at: float | None = None

    @staticmethod
    def check(principal: Principal, action: str) -> None:
        """403 unless the caller's roles grant `action`."""
        if not principal.allows(action):
            raise Forbidden("Authorization failed.")

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller an Authorization header proves (anyone when authentication is off); else 401."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:  # no bearer token (RFC 6750 §3.1: no error code)
            raise self._unauthenticated(token_sent=False)
        if self.api_keys is not None and token.count(".") != 2:  # not a JWT: an API key
            entry = self.api_keys.find(token)
            if entry is None:
                log.info("bearer token refused: unknown API key")
                raise self._unauthenticated(token_sent=True)
            return Principal(entry.name, frozenset(entry.roles), self.roles.actions(entry.roles))
        if not self.authority:
            raise self._unauthenticated(token_sent=True)
        try:
            claims = self._decode(token)
        except jwt.PyJWKClientConnectionError:
            log.error("the identity provider's keys could not be fetched from %s", self.authority)
            raise IdentityProviderUnavailable(
                "the identity provider cannot be reached to check the token; try again later"
            ) from None
        except jwt.PyJWTError as exc:
            log.info("bearer token refused: %s", type(exc).__name__)
            raise self._unauthenticated(token_sent=True) from None
        roles = claims.get(self.roles_claim) or []
        roles = [roles] if isinstance(roles, str) else [str(r) for r in roles if isinstance(r, str)]
        subject = str(claims.get("sub") or claims.get("oid") or "unknown")
        return Principal(subject, frozenset(roles), self.roles.actions(roles))

    def _decode(self, token: str) -> dict[str, Any]:
        signing_key = self._keys().get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key,
            algorithms=list(ALGORITHMS),
            audience=list(self.audiences),
            issuer=[self.authority, self.authority + "/"],  # issuers differ on the trailing slash
            leeway=LEEWAY,
            options={"require": ["exp", "iss", "aud"]},
        )
        return claims

    def _keys(self) -> PyJWKClient:
        """The issuer's key client, from its discovery document (fetched once it works)."""
        with self._lock:
            if self._jwks is None:
                failed_at = self._discovery_failed_at
                if failed_at is not None and time.monotonic() - failed_at < DISCOVERY_RETRY_AFTER:
                    raise jwt.PyJWKClientConnectionError("discovery failed moments ago")
                try:
                    jwks_uri = self._jwks_uri()
                except jwt.PyJWKClientConnectionError:
                    self._discovery_failed_at = time.monotonic()
                    raise
                self._jwks = PyJWKClient(
                    jwks_uri,
                    # No per-kid cache: a key the issuer has withdrawn must stop working when
                    # the cached key set is refreshed, not linger in an LRU cache.
                    cache_keys=False,
                    lifespan=JWKS_LIFESPAN,
                    timeout=_FETCH_TIMEOUT,
                    cooldown_duration=JWKS_COOLDOWN,
                )
            return self._jwks

    def _jwks_uri(self) -> str:
        url = f"{self.authority}/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:
                document = json.load(response)
        except (OSError, ValueError) as exc:
            raise jwt.PyJWKClientConnectionError(f"discovery document: {exc}") from None
        issuer = str(document.get("issuer", "")).rstrip("/")
        if issuer != self.authority or not isinstance(document.get("jwks_uri"), str):
            log.error("the discovery document at %s names issuer %r and no usable jwks_uri", url, issuer)
            raise jwt.PyJWKClientConnectionError("discovery document does not match the authority")
        uri: str = document["jwks_uri"]
        return uri

    def _unauthenticated(self, *, token_sent: bool) -> Unauthenticated:
        audience = self.audiences[0] if self.audiences else ""
        challenge = f'Bearer authorization_uri="{self.authority}", resource_id="{audience}", realm="{audience}"'
        if token_sent:
            challenge += ', error="invalid_token"'
        return Unauthenticated("", headers={"WWW-Authenticate": challenge})
