"""Fixtures for the end-to-end tests: a real gunicorn process per test module.

End-to-end tests use it as clients would: over HTTP, with their own libraries and
tools (requests, curl, dicomweb-client). The server is started and stopped here;
nothing depends on a service started by hand.
"""
from __future__ import annotations

import os

import pytest
from live_servers import LiveServer, start_server, stop_server

# The tutorial replays' shared checks: plain `assert`s, rewritten like the tests' own.
pytest.register_assert_rewrite("tutorial_common")

__all__ = ["LiveServer", "start_server", "stop_server"]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A fresh gunicorn per module, or the server at DICOMSERVER_LIVE_URL (e.g. `make run`'s).

    The external form lets the tutorial replays check a running deployment:
    `DICOMSERVER_LIVE_URL=http://127.0.0.1:8080 make test-live PYTEST_ARGS=-k tutorial`.
    """
    external = os.environ.get("DICOMSERVER_LIVE_URL")
    if external:
        yield LiveServer(external.rstrip("/"), None, None, None)  # type: ignore[arg-type]
        return
    server = start_server(tmp_path_factory.mktemp("live"))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """A gunicorn that checks bearer tokens (a local identity provider signs them), with
    `tutorial_common.TOKEN` a real admin token for the module's duration; with
    DICOMSERVER_LIVE_URL, that server and the placeholder token, as before."""
    import time

    import tutorial_common
    from auth_fixtures import AUDIENCE, IdentityProvider

    external = os.environ.get("DICOMSERVER_LIVE_URL")
    if external:
        yield LiveServer(external.rstrip("/"), None, None, None)  # type: ignore[arg-type]
        return
    provider = IdentityProvider()
    env = {
        "DICOMWEB_AUTH_AUTHORITY": provider.issuer,
        "DICOMWEB_AUTH_AUDIENCE": AUDIENCE,
        "DICOMWEB_AUTH_ALLOW_HTTP": "1",
    }
    server = start_server(tmp_path_factory.mktemp("live-auth"), env=env)
    placeholder = tutorial_common.TOKEN
    tutorial_common.TOKEN = provider.token(roles=["globalAdmin"], sub="tutorial", exp=int(time.time()) + 3600)
    try:
        yield server
    finally:
        tutorial_common.TOKEN = placeholder
        stop_server(server)
        provider.stop()
