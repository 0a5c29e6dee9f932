"""The absolute root URL that RetrieveURLs and BulkDataURIs are built on, from trusted facts only.

PS3.18 wants those URLs absolute, and a client follows them, so they must work and must
not be steerable: DICOMWEB_PUBLIC_URL when set; else the request's Host only when it
names a trusted host (DICOMWEB_TRUSTED_HOSTS), with the port the client connected to
when the Host header left it out; else the server's own address. X-Forwarded-* headers
count only when the direct client is a configured proxy (DICOMWEB_TRUSTED_PROXIES).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .settings import Settings

DEFAULT_PORTS = {"http": "80", "https": "443"}


def request_root(settings: Settings, environ: Mapping[str, Any]) -> str:
    """scheme://host[:port][/prefix] of the API as the client should see it (no trailing slash)."""
    if settings.public_url:
        return settings.public_url
    scheme = str(environ.get("wsgi.url_scheme") or "http")
    if environ.get("REMOTE_ADDR") in settings.trusted_proxies:
        forwarded_host = _first(environ.get("HTTP_X_FORWARDED_HOST"))
        scheme = _first(environ.get("HTTP_X_FORWARDED_PROTO")) or scheme
        prefix = (_first(environ.get("HTTP_X_FORWARDED_PREFIX")) or "").rstrip("/")
        if forwarded_host:
            name, port = split_host(forwarded_host)
            port = port or _first(environ.get("HTTP_X_FORWARDED_PORT"))
            return f"{scheme}://{join_host(name, port, scheme)}{prefix}"
    else:
        prefix = ""
    local_name, local_port = server_address(environ)
    name, port = split_host(str(environ.get("HTTP_HOST") or ""))
    if not name or name.lower() not in settings.trusted_hosts:
        name, port = local_name, local_port
    return f"{scheme}://{join_host(name, port or local_port, scheme)}{prefix}"


def client_address(settings: Settings, environ: Mapping[str, Any]) -> str:
    """Who sent the request: the direct peer, or, when the peer is a trusted proxy, the address
    that proxy appended to X-Forwarded-For (the last entry: earlier ones the client may forge)."""
    peer = str(environ.get("REMOTE_ADDR") or "-")
    if peer not in settings.trusted_proxies:
        return peer
    entries = [e.strip() for e in str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",") if e.strip()]
    return entries[-1] if entries else peer


def server_address(environ: Mapping[str, Any]) -> tuple[str, str]:
    """The address the client connected to: the accepted socket's (gunicorn), else the
    WSGI server's SERVER_NAME and SERVER_PORT (werkzeug's, which do not come from Host)."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            address = sock.getsockname()
            return str(address[0]), str(address[1])
        except (OSError, AttributeError, IndexError, TypeError):
            pass
    return str(environ.get("SERVER_NAME") or "localhost"), str(environ.get("SERVER_PORT") or "")


def split_host(host: str) -> tuple[str, str | None]:
    """'name[:port]' or '[v6]:port' into (name without brackets, port or None)."""
    host = host.strip()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port if port.isdigit() else None
    return host, None


def join_host(name: str, port: str | None, scheme: str) -> str:
    shown = f"[{name}]" if ":" in name else name
    return shown if not port or DEFAULT_PORTS.get(scheme) == port else f"{shown}:{port}"


def _first(value: Any) -> str | None:
    """The first (client-side) entry of a comma-separated forwarded header."""
    if not value:
        return None
    return str(value).split(",")[0].strip() or None
