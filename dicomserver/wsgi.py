"""The WSGI application, for `gunicorn dicomserver.wsgi:app` wherever the package is installed.

Configuration comes from the DICOMWEB_* environment variables (see README.md).
"""
from . import create_app

app = create_app()
