"""The HTTP service and its web page: ``covidnet serve`` (see ``app.py``)."""

from .app import ServeConfig, create_app, serve, sniff

__all__ = ["ServeConfig", "create_app", "serve", "sniff"]
