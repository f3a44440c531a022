"""The service's HTTP surface: admin/SQL REST API, /metrics, status page."""

from ._app import build_app, overview, start_http
from ._protocol import HttpService
from ._security import check_http_security

__all__ = ["HttpService", "build_app", "check_http_security", "overview", "start_http"]
