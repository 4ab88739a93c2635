#!/usr/bin/env bash
# Install ecdc_stream with its test dependencies and run the test suite.
# torch is pinned in pyproject.toml so that the CPU build 2.13.0 satisfies it.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet -e ".[test,demos]"
python -m pytest -q "$@"
