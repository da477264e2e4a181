"""The examples run as a user runs them (a subprocess), with a short training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HSICLUSTER_QUICKSTART_STEPS": "20", "HSICLUSTER_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(out),
                             "--device", "cpu"], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ACC " in result.stdout and "saved " in result.stdout
    for name in ("labels.tif", "labels.png", "labels.stac.json", "salinas_a.ckpt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.stac.json").read_text())["properties"]["hsicluster:k"] == 6
