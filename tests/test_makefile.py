"""``make demo``: trains once, then reuses the model unless ``RETRAIN=1`` (run against a stand-in hsicluster)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_reuses_the_trained_model(tmp_path: Path) -> None:
    venv, out, log = tmp_path / "venv", tmp_path / "out", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "hsicluster"  # records its arguments instead of running
    fake.write_text(f'#!/bin/sh\necho "$1" >> {log}\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: setup is done

    def demo(*extra: str) -> tuple[list[str], str]:
        log.unlink(missing_ok=True)
        result = subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"VENV={venv}", f"OUT={out}", *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return log.read_text().split(), result.stdout

    calls, _ = demo()
    assert calls == ["ingest", "info", "train", "predict", "evaluate"]
    (out / "salinas_a.ckpt").touch()  # what train leaves
    calls, stdout = demo()
    assert "train" not in calls and "reusing the trained model" in stdout and "RETRAIN=1" in stdout
    calls, _ = demo("RETRAIN=1")
    assert "train" in calls
