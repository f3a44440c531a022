"""pytest plugins: private servers (PostgreSQL, Kafka, moto, Prometheus) and receivers."""

from __future__ import annotations

import os

CI_TRUE = ("1", "true", "yes")


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` is ``1``, ``true`` or ``yes``, any case), where a
    server or tool that cannot be started is a failure, never a skip. ``CI=false`` or
    ``CI=0`` is not CI; ``scripts/test.sh`` sets ``CI=true`` unless it is already set."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE
