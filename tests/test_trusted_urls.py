"""Absolute URLs in answers come from trusted facts only, never from what any client claims.

RetrieveURLs (STOW, QIDO) and BulkDataURIs (metadata) are followed by clients, so a forged
Host or X-Forwarded-* header must not steer them elsewhere: DICOMWEB_PUBLIC_URL wins; else
the Host header when it names a trusted host; else the server's own address. Forwarded
headers count only from a configured proxy.
"""
from __future__ import annotations

import pytest
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings

STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
PROXY = "10.0.0.5"
FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "pacs.example.org",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/dicomweb",
}


def absolute_urls(client, headers: dict[str, str] | None = None, remote_addr: str = "127.0.0.1") -> dict[str, str]:
    """Store an instance with Pixel Data as bulk data, then collect the URLs the answers give for it."""
    headers = headers or {}
    request = {"environ_base": {"REMOTE_ADDR": remote_addr}}
    ds = make_instance(rows=32, columns=32)  # 2 KiB of Pixel Data: above the inline threshold
    study = ds.StudyInstanceUID
    stored = client.post(f"/v2/studies/{study}", data=to_bytes(ds), headers={**STOW, **headers}, **request)
    assert stored.status_code == 200, stored.data
    found = client.get(f"/v2/studies?StudyInstanceUID={study}", headers=headers, **request)
    assert found.status_code == 200, found.data
    metadata = client.get(f"/v2/studies/{study}/metadata", headers=headers, **request)
    assert metadata.status_code == 200, metadata.data
    return {
        "STOW RetrieveURL": stored.json["00081190"]["Value"][0],
        "STOW instance RetrieveURL": stored.json["00081199"]["Value"][0]["00081190"]["Value"][0],
        "QIDO RetrieveURL": found.json[0]["00081190"]["Value"][0],
        "BulkDataURI": metadata.json[0]["7FE00010"]["BulkDataURI"],
    }


def assert_under(urls: dict[str, str], root: str) -> None:
    for name, url in urls.items():
        assert url.startswith(f"{root}/v2/studies/"), (name, url, root)


@pytest.mark.parametrize(
    "host, root",
    [
        (None, "http://localhost"),
        ("localhost", "http://localhost"),  # no port: the port the server listens on (80 here)
        ("localhost:8042", "http://localhost:8042"),
        ("127.0.0.1:8042", "http://127.0.0.1:8042"),
        ("[::1]:8042", "http://[::1]:8042"),
    ],
)
def test_a_trusted_host_is_used(app_factory, host, root):
    client = app_factory().test_client()
    assert_under(absolute_urls(client, {"Host": host} if host else {}), root)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8042", "localhost.evil.example", "127.0.0.1.evil.example:80"])
def test_an_untrusted_host_is_never_echoed(app_factory, host):
    client = app_factory().test_client()
    urls = absolute_urls(client, {"Host": host})
    assert_under(urls, "http://localhost")
    feed = client.get("/v2/changefeed?includemetadata=true", headers={"Host": host})
    assert "evil.example" not in feed.get_data(as_text=True)


def test_configured_trusted_hosts(app_factory):
    client = app_factory(trusted_hosts=("pacs.example.org",)).test_client()
    assert_under(absolute_urls(client, {"Host": "pacs.example.org:8443"}), "http://pacs.example.org:8443")
    assert_under(absolute_urls(client, {"Host": "evil.example:8443"}), "http://localhost")


def test_public_url_wins_over_everything(app_factory):
    client = app_factory(
        public_url="https://dicom.example.com/api", trusted_hosts=("pacs.example.org",), trusted_proxies=(PROXY,)
    ).test_client()
    assert_under(absolute_urls(client), "https://dicom.example.com/api")
    assert_under(absolute_urls(client, {"Host": "evil.example"}), "https://dicom.example.com/api")
    assert_under(absolute_urls(client, {"Host": "pacs.example.org", **FORWARDED}, PROXY), "https://dicom.example.com/api")


def test_forwarded_headers_from_a_trusted_proxy_are_honoured(app_factory):
    client = app_factory(trusted_hosts=("localhost", "pacs.example.org"), trusted_proxies=(PROXY,)).test_client()
    assert_under(absolute_urls(client, FORWARDED, PROXY), "https://pacs.example.org:8443/dicomweb")


@pytest.mark.parametrize("proxies", [(), ("10.0.0.6",)], ids=["no proxies", "another proxy"])
def test_forwarded_headers_from_anyone_else_are_ignored(app_factory, proxies):
    # pacs.example.org is a trusted host, so only the proxy rule can keep it out.
    client = app_factory(trusted_hosts=("localhost", "pacs.example.org"), trusted_proxies=proxies).test_client()
    assert_under(absolute_urls(client, FORWARDED, PROXY), "http://localhost")


def test_trusted_hosts_and_proxies_from_the_environment():
    defaults = Settings.from_env({})
    assert defaults.trusted_hosts == ("localhost", "127.0.0.1", "::1")
    assert defaults.trusted_proxies == ()
    settings = Settings.from_env(
        {"DICOMWEB_TRUSTED_HOSTS": "pacs.example.org, localhost", "DICOMWEB_TRUSTED_PROXIES": "10.0.0.5,10.0.0.6"}
    )
    assert settings.trusted_hosts == ("pacs.example.org", "localhost")
    assert settings.trusted_proxies == ("10.0.0.5", "10.0.0.6")
