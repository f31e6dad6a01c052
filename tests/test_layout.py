"""The package's layering, as the import contract in pyproject.toml states it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contract_holds():
    """Layers import only downwards, the fast paths only through the speedups seam, and no
    package's modules import each other in a cycle (``features`` and ``moq`` once did)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_startup_detects_moq_without_importing_the_transport():
    script = (
        "import sys; import pipecat_base.startup.features; "
        "print('pipecat_base.transports.moq' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
