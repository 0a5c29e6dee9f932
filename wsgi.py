"""WSGI entry point in a checkout: `gunicorn wsgi:app` and `flask --app wsgi run`.

The same app ships inside the package as `dicomserver.wsgi:app`.
"""
from dicomserver.wsgi import app

__all__ = ["app"]
