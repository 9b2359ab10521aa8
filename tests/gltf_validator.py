"""Khronos's glTF-Validator for the tests: `validate(path)` runs scripts/gltf-validate.cjs (the `gltf-validator`
npm package pinned in .web/) and returns its report; the test skips, saying how to install it, where it is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gltf-validate.cjs"
PACKAGE = REPO / ".web" / "node_modules" / "gltf-validator"
HINT = "run `bash scripts/web-deps.sh` (make setup does) to install the glTF validator"


def validate(path: Path) -> dict:
    """The validator's report on `path`: {"errors", "warnings", "infos", "hints", "messages": [...], "info": {...}}."""
    if shutil.which("node") is None:
        pytest.skip(f"Node.js is missing: {HINT}")
    if not PACKAGE.exists():
        pytest.skip(f"gltf-validator is not installed ({PACKAGE} is missing): {HINT}")
    res = subprocess.run(["node", str(SCRIPT), str(path), "--max-issues", "50"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode in (0, 1), f"the validator could not read {path}: {res.stderr}"
    return json.loads(res.stdout)


def codes(report: dict, severity: int) -> list[str]:
    """The issue codes of one severity (0 error, 1 warning, 2 info, 3 hint)."""
    return [m["code"] for m in report["messages"] if m["severity"] == severity]
