#!/usr/bin/env bash
# The one test command, for humans and CI alike: installs what the tests need
# (Python packages, PostgreSQL, Java/Maven for Kafka, Prometheus, Chromium) and
# runs the whole suite. Tests start their own PostgreSQL, Kafka broker, moto
# server, receivers and Prometheus on free local ports.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
bash scripts/install-system-deps.sh

export CI="${CI:-true}"   # a missing server is a failure, never a skip
python3 -m ruff check src tests
python3 -m mypy src
python3 -m pytest -q "$@"
