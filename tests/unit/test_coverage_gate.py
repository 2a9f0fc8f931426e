"""The coverage gate really fails a run whose coverage drops below it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gate_is_85_percent_and_fails_a_run_below_it(tmp_path: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["coverage"]["report"]["fail_under"] == 85
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE", "COVERAGE"))}
    # a run of one small test file covers far less than 85 % of src/
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/unit/core/test_policy.py",
            "--cov=wa_trio",
            f"--cov-report=json:{tmp_path / 'cov.json'}",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Required test coverage of 85.0% not reached" in result.stdout
