"""WSGI entry point for gunicorn (`gunicorn wsgi:app`) and `flask --app wsgi run`.

Configuration comes from the DICOMWEB_* environment variables (see README.md).
"""
from dicomserver import create_app

app = create_app()
