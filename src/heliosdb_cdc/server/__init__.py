"""The service's HTTP surface: admin/SQL REST API, /metrics, status page."""

from ._app import build_app, overview, start_http

__all__ = ["build_app", "overview", "start_http"]
