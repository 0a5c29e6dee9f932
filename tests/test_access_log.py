"""gunicorn's access log lines under the project's logger class (gunicorn_worker.AccessLogger),
which makes only the atoms the format names: the same lines as gunicorn's own logger."""
from __future__ import annotations

import datetime as dt
import logging
from typing import ClassVar

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from dicomserver import gunicorn_conf
from dicomserver.gunicorn_worker import AccessLogger

EVERY_ATOM = " ".join(
    f"%({atom})s" for atom in "h l u t r s m U q H b B f a T D M L p".split()
) + ' "%({x-request-id}o)s" %({User-Agent}i)s %({missing}i)s %({content-type}o)s %({remote_addr}e)s %(zz)s'


class Response:
    status = "200 OK"
    sent = 416
    headers: ClassVar = [("Content-Type", "application/dicom+json"), ("X-Request-Id", 'ab"cd'), ("X-Request-Id", "last")]


class Request:
    headers: ClassVar = [("HOST", "127.0.0.1"), ("USER-AGENT", 'curl/8 "quoted"')]


ENVIRON = {
    "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": "/v2/studies?x=1",
    "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/v2/studies", "QUERY_STRING": "x=1",
    "HTTP_USER_AGENT": 'curl/8 "quoted"', "HTTP_AUTHORIZATION": "Basic dXNlcjpwdw==",
}


def lines(logger_class: type[glogging.Logger], log_format: str, caplog) -> list[str]:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", log_format)
    logger = logger_class(cfg)
    logger.now = lambda: "[06/Dec/2026:12:00:00 +0000]"  # type: ignore[method-assign]
    logger.access_log.propagate = True
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gunicorn.access"):
        logger.access(Response(), Request(), ENVIRON, dt.timedelta(seconds=1, microseconds=234567))
    return [record.getMessage() for record in caplog.records if record.name == "gunicorn.access"]


@pytest.mark.parametrize("log_format", [gunicorn_conf.access_log_format, EVERY_ATOM])
def test_the_lines_are_gunicorns(log_format, caplog):
    ours = lines(AccessLogger, log_format, caplog)
    assert len(ours) == 1
    assert ours == lines(glogging.Logger, log_format, caplog)


def test_the_server_uses_it():
    assert gunicorn_conf.logger_class == "dicomserver.gunicorn_worker.AccessLogger"
