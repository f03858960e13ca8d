"""Generated documents stay in sync with the code they describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_matches_the_config_structs() -> None:
    generated = subprocess.run(
        [sys.executable, "scripts/config_reference.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert generated == (ROOT / "docs" / "configuration.md").read_text(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/config_reference.py > docs/configuration.md"
    )
