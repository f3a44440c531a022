#!/usr/bin/env bash
# The one test command, for humans and CI alike: installs what the tests need
# (Python packages, PostgreSQL, Java/Maven for Kafka, Prometheus, Chromium) and
# runs the whole suite. Tests start their own PostgreSQL, Kafka broker, moto
# server, receivers and Prometheus on free local ports.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -e '.[test]'   # builds the compiled codec (cargo)
# the suite runs on the compiled codec: a failed build must not pass as the pure-Python one
python3 -c "from heliosdb_cdc.postgres import _codec; _codec.load_native()"
bash scripts/install-system-deps.sh

export CI="${CI:-true}"   # a missing server is a failure, never a skip
python3 -m ruff check src tests
python3 -m mypy src
python3 -m pytest -q "$@"
# the reference: the decoder tests again on the pure-Python codec (test_codec compares both)
HELIOSDB_CDC_PURE_PYTHON=1 python3 -m pytest -q tests/test_decoder.py tests/test_decoding.py \
  tests/test_types.py tests/test_streaming_txn.py tests/test_schema_change.py
