"""The command sets OpenMP's wait policy before torch loads, and keeps a policy the user set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Prints the policy in effect once the command module is imported, and whether torch had been
# loaded by then (libgomp reads the variable when torch loads it).
PROBE = """
import os, sys
import ecdc_stream.cli
print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def probe(environment: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=dict(environment, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_cli_sets_passive_wait_before_torch():
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    assert probe(environment) == ["PASSIVE", "False"]


def test_cli_keeps_user_wait_policy():
    assert probe(dict(os.environ, OMP_WAIT_POLICY="ACTIVE")) == ["ACTIVE", "False"]
