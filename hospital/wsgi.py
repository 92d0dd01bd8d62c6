"""WSGI entry point for production servers: `gunicorn 'hospital.wsgi:app'`."""

from hospital.app import create_app

app = create_app()
