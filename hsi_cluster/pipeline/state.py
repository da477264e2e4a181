"""What a pipeline remembers between runs: per job, a hash of its parameters and fingerprints of its
inputs and outputs, in ``WORKDIR/.hsicluster-pipeline.json``.

A job is up to date when its entry exists, the parameter hash is the same, and every input (with the files
read with it: :func:`~hsi_cluster.io.scene.scene_files`) and output still has its recorded fingerprint. A
file's fingerprint is its size and modification time, plus its sha256 when it is small (≤ 16 MiB): a small
file whose time changed but whose content did not still counts as unchanged (so rewriting an identical file
reruns nothing downstream). A folder's fingerprint is the hash of its ``zarr.json`` for a Zarr store
(rewritten on every ingest), else of the names, sizes and times of the files in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsi_cluster.errors import HsiClusterError
from hsi_cluster.io.files import exclusive_lock, sha256_of, write_text_atomic

STATE_FILE = ".hsicluster-pipeline.json"
LOCK_FILE = ".hsicluster-pipeline.lock"
STATE_VERSION = 1
HASH_LIMIT = 16 * 2**20  # files up to this size are also fingerprinted by content


def fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint of a file or folder, or None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if path.is_dir():
        meta = path / "zarr.json"
        if meta.is_file():
            return {"folder": sha256_of(meta)}
        digest = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                item = Path(root) / name
                item_stat = item.stat()
                digest.update(f"{item.relative_to(path)}|{item_stat.st_size}|{item_stat.st_mtime_ns}\n".encode())
        return {"folder": digest.hexdigest()}
    found: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASH_LIMIT:
        found["sha256"] = sha256_of(path)
    return found


def unchanged(recorded: dict[str, Any] | None, path: Path) -> bool:
    """Whether ``path`` still matches its recorded fingerprint (cheaply when size and time agree)."""
    if recorded is None:
        return False
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if "folder" in recorded:
        current = fingerprint(path)
        return current is not None and current.get("folder") == recorded["folder"]
    if path.is_dir() or stat.st_size != recorded.get("size"):
        return False
    if stat.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return "sha256" in recorded and stat.st_size <= HASH_LIMIT and sha256_of(path) == recorded["sha256"]


def params_hash(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _param_hashes(params: dict[str, Any]) -> dict[str, str]:
    """A short hash per parameter (``options.tiles``, ``inputs.scenes``, …), to say which one changed."""
    flat: dict[str, str] = {}
    for group, value in params.items():
        for key, item in (value.items() if isinstance(value, dict) else [("", value)]):
            flat[f"{group}.{key}" if key else group] = params_hash(item)[:8]
    return flat


def _changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    names = {key.split(".", 1)[-1] for key in set(before) | set(now) if before.get(key) != now.get(key)}
    return sorted(names)


@dataclass
class State:
    """The state file's content: ``steps[name]["jobs"][job]`` → params, inputs, outputs, seconds."""

    path: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline: str | None = None  # the name of the pipeline whose runs the workdir holds (None: written before it was kept)

    @classmethod
    def load(cls, workdir: Path) -> State:
        path = workdir / STATE_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError):
            return cls(path)  # unreadable: every step reruns, which is always safe
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            return cls(path)
        return cls(path, steps=dict(saved.get("steps") or {}), pipeline=saved.get("pipeline"))

    def save(self) -> None:
        """Write atomically."""
        body = {"version": STATE_VERSION, "pipeline": self.pipeline, "steps": self.steps}
        write_text_atomic(self.path, json.dumps(body, indent=1))

    def job(self, step: str, job: str) -> dict[str, Any] | None:
        return (self.steps.get(step) or {}).get("jobs", {}).get(job)

    def why_run(self, step: str, job: str, params: dict[str, Any], inputs: dict[str, Path],
                outputs: dict[str, Path]) -> str | None:
        """None when the job is up to date, else why it must run."""
        entry = self.job(step, job)
        if entry is None:
            return "never ran"
        if "failed" in entry:
            return "failed last time"
        if entry.get("params") != params_hash(params):
            changed = _changed(entry.get("param_hashes") or {}, _param_hashes(params))
            return "parameters changed" + (f" ({', '.join(changed)})" if changed and entry.get("param_hashes") else "")
        for key, path in outputs.items():
            if not path.exists():
                return f"output {key} is missing"
            if not unchanged(entry.get("outputs", {}).get(key), path):
                return f"output {key} changed since it was written"
        for key, path in inputs.items():
            if not unchanged(entry.get("inputs", {}).get(key), path):
                return f"input {key} changed" if path.exists() else f"input {key} is missing"
        for key in entry.get("inputs", {}):
            if key not in inputs:  # a file read with a scene (an EnMAP METADATA.XML) removed since the job ran
                return f"input {key} is missing"
        return None

    def record(self, step: str, kind: str, job: str, *, params: dict[str, Any],
               inputs: dict[str, dict[str, Any] | None], outputs: dict[str, Path], seconds: float,
               summary: dict[str, Any] | None = None) -> None:
        """Remember a finished job (input fingerprints taken before it ran)."""
        entry = self.steps.setdefault(step, {"kind": kind, "jobs": {}})
        entry["kind"] = kind
        entry["jobs"][job] = {"params": params_hash(params), "param_hashes": _param_hashes(params), "inputs": inputs,
                              "outputs": {key: fingerprint(path) for key, path in outputs.items()},
                              "seconds": round(seconds, 3), "summary": summary or {},
                              "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "finished_ns": time.time_ns()}

    def record_failure(self, step: str, kind: str, job: str, reason: str, *, seconds: float | None = None) -> None:
        """Remember that a job failed (it runs again next time, and says why), and how long it ran."""
        entry = self.steps.setdefault(step, {"kind": kind, "jobs": {}})
        entry["jobs"][job] = {"failed": reason,
                              "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              **({} if seconds is None else {"seconds": round(seconds, 3)})}

    def forget_job(self, step: str, job: str) -> None:
        """Drop a job's entry, so that it runs next time."""
        (self.steps.get(step) or {}).get("jobs", {}).pop(job, None)

    def forget_other_jobs(self, step: str, jobs: list[str]) -> None:
        """Drop entries of jobs the step no longer has (e.g. a seed removed from the list)."""
        entry = self.steps.get(step)
        if entry:
            entry["jobs"] = {k: v for k, v in entry["jobs"].items() if k in jobs}

    def seconds(self, step: str) -> float | None:
        jobs = (self.steps.get(step) or {}).get("jobs") or {}
        return sum(job.get("seconds", 0.0) for job in jobs.values()) if jobs else None

    def finished(self, step: str) -> str | None:
        jobs = (self.steps.get(step) or {}).get("jobs") or {}
        return max((job.get("finished", "") for job in jobs.values()), default=None) or None

    def last_run(self, step: str) -> int | None:
        """When a job of ``step`` last finished, in ns (a rerun within the same second as the last changes it)."""
        jobs = (self.steps.get(step) or {}).get("jobs") or {}
        return max((int(job.get("finished_ns", 0)) for job in jobs.values()), default=None)


def workdir_lock(workdir: Path) -> AbstractContextManager[None]:
    """An exclusive lock on the workdir, so two runs of one pipeline do not write the same files."""
    return exclusive_lock(workdir / LOCK_FILE, lambda holder: HsiClusterError(
        f"{workdir}: another 'hsicluster run' is working in this folder (pid {holder}); wait for it to finish"),
        remove=True)
