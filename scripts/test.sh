#!/usr/bin/env bash
# Install ecdc_stream with its test dependencies and run the test suite.
# torch is pinned in pyproject.toml so that the CPU build 2.13.0 satisfies it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The exact pin keeps pip from fetching a newer 2.13.x, whose default Linux build is the multi-GB CUDA one.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,demos]"
python -m pytest -q "$@"
