"""Running a pipeline: plan every step, then run, in file order, the jobs that are out of date.

The pieces: :mod:`.schema` reads and checks the file, :mod:`.plan` resolves every step's jobs before
anything runs, :mod:`.steps` runs one job of each kind, :mod:`.state` says whether a job is up to date
and records what it did, :mod:`.report` renders the report. This module is the run loop: a job is
skipped when its state entry says it is up to date; ``force`` reruns every job, ``dry_run`` only says
what would run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsi_cluster.errors import HsiClusterError, counted
from hsi_cluster.pipeline.plan import Job, StepPlan, plan, relative, sample_scenes
from hsi_cluster.pipeline.schema import Pipeline, PipelineError, StepSpec, load_pipeline
from hsi_cluster.pipeline.state import State, fingerprint, workdir_lock
from hsi_cluster.pipeline.steps import RUNNERS, LogFn, StepContext, StepOutcome, describe

__all__ = ["RunResult", "StepOutcome", "describe", "plan", "run", "sample_scenes"]


@dataclass
class RunResult:
    """A finished (or dry) run: per-step outcomes, the report written, failures to report."""

    pipeline: Pipeline
    steps: list[StepOutcome]
    seconds: float
    report: Path | None = None
    failures: list[str] = field(default_factory=list)

    def outcome(self, name: str) -> StepOutcome:
        return next(step for step in self.steps if step.name == name)

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.status in ("ran", "failed")]

    @property
    def skipped(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "skipped"]


def run(path: str | os.PathLike[str], *, workdir: str | os.PathLike[str] | None = None, force: bool = False,
        dry_run: bool = False, only: list[str] | None = None, log: LogFn | None = None) -> RunResult:
    """Run a pipeline file: every step that is out of date, in file order.

    Args:
        path: the YAML file.
        workdir: overrides the file's ``workdir``.
        force: rerun every (selected) step even when up to date.
        dry_run: only say, per step, whether it would run and why; nothing is written.
        only: run just these steps (their inputs must exist); the others are left alone.
        log: receives one line per step (and the training epochs, batch notices).

    Returns:
        the outcome of each step; ``failures`` lists the scenes a batch step could not label.

    Raises:
        PipelineError: the file is malformed, an input is missing, a name in ``only`` is unknown.
        HsiClusterError: a step failed (its message names the problem).
    """
    started = time.perf_counter()
    log = log or (lambda message: None)
    pipeline = load_pipeline(path, workdir=workdir)
    names = [step.name for step in pipeline.steps]
    for name in only or []:
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"steps: {', '.join(names)}"
            raise PipelineError(f"{pipeline.path}: --only {name}: no step of that name; {hint}")
    plans = {step_plan.spec.name: step_plan for step_plan in plan(pipeline)}
    if dry_run:
        return _dry_run(pipeline, plans, force=force, only=only, log=log, started=started)
    pipeline.workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(pipeline.workdir):
        return _run(pipeline, plans, force=force, only=only, log=log, started=started)


def _job_reason(ctx: StepContext, step: StepSpec, job: Job, *,
                force: bool) -> tuple[str | None, dict[str, Any], dict[str, Path]]:
    """(why the job must run or None, its parameters, its input files by name)."""
    workdir = ctx.pipeline.workdir
    params = job.params(step.kind, workdir)
    if step.kind == "report":  # its timings table changes whenever another step runs
        # (when each other step last ran, to the ns: a step rerun within the second of its last run changed it too)
        params["timings"] = {other.name: [ctx.state.finished(other.name), ctx.state.seconds(other.name),
                                          ctx.state.last_run(other.name)]
                             for other in ctx.pipeline.steps if other.name != step.name}
        params["title"] = ctx.pipeline.description, ctx.pipeline.name
    inputs = {relative(p, workdir): p for p in job.input_files()}
    reason = ctx.state.why_run(step.name, job.key, params, inputs, {relative(p, workdir): p for p in job.outputs.values()})
    if reason is None and step.kind == "batch":  # its output is the manifest: the labels it lists must be there too
        reason = _missing_labels(job.outputs["manifest"])
    if force:
        reason = "forced"
    return reason, params, inputs


def _missing_labels(manifest: Path) -> str | None:
    """Why a batch job whose manifest is unchanged must run again: label rasters it lists as written are gone."""
    try:
        records = json.loads(manifest.read_text()).get("scenes", {})
    except (OSError, ValueError, AttributeError):
        return None  # the manifest's own fingerprint decides
    missing = [record["output"] for record in records.values() if isinstance(record, dict)
               and record.get("status") in ("done", "skipped") and not Path(str(record.get("output"))).is_file()]
    if not missing:
        return None
    return f"{counted(len(missing), 'label raster')} it wrote {'is' if len(missing) == 1 else 'are'} missing " \
           f"({Path(missing[0]).name}{', …' if len(missing) > 1 else ''})"


def _state_of(pipeline: Pipeline) -> State:
    """The workdir's state, refused when it holds the runs of another pipeline (whose files would be overwritten)."""
    state = State.load(pipeline.workdir)
    if state.pipeline is not None and state.pipeline != pipeline.name:
        raise PipelineError(f"{pipeline.path}: its workdir {pipeline.workdir} holds the runs of the pipeline "
                            f"{state.pipeline!r}, whose files this one would overwrite; give it its own workdir "
                            f"(workdir: in the YAML, or --workdir)")
    state.pipeline = pipeline.name
    return state


def _dry_run(pipeline: Pipeline, plans: dict[str, StepPlan], *, force: bool, only: list[str] | None, log: LogFn,
             started: float) -> RunResult:
    ctx = StepContext(pipeline, plans, _state_of(pipeline), [], log)
    would: set[str] = set()
    rewritten: dict[Path, str] = {}  # output of a job that would run → its step
    for step in pipeline.steps:
        step_plan = plans[step.name]
        if only and step.name not in only:
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "not selected", jobs=len(step_plan.jobs)))
            continue
        reasons = [_job_reason(ctx, step, job, force=force)[0] for job in step_plan.jobs]
        if not only:
            if step.kind == "report":  # it also shows every step's timings, so it follows any of them
                after = [s.name for s in pipeline.steps[:step.index] if s.name in would]  # in pipeline order
                reasons = [r or (f"after {', '.join(repr(a) for a in after)}" if after else None) for r in reasons]
            else:  # a job follows the upstream jobs whose outputs it reads, not the whole step
                reasons = [r or _reads_rewritten(job, rewritten) for r, job in zip(reasons, step_plan.jobs, strict=True)]
        if any(reasons):
            reason = next(r for r in reasons if r)
            count = sum(1 for r in reasons if r)
            would.add(step.name)
            rewritten.update({path: step.name for r, job in zip(reasons, step_plan.jobs, strict=True) if r
                              for path in job.outputs.values()})
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "would run", reason, jobs_run=count,
                                            jobs=len(reasons)))
            jobs = f" ({count} of {len(reasons)} jobs)" if len(reasons) > 1 else ""
            log(f"{step.name}: would run{jobs}: {reason}")
        else:
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "up to date", jobs=len(reasons)))
            log(f"{step.name}: up to date")
        for line in _chosen_scenes(step, step_plan):
            log(f"    {line}")
    return RunResult(pipeline, ctx.outcomes, time.perf_counter() - started)


#: Scenes a dry run names per job before it says "… and N more".
DRY_RUN_SCENES_SHOWN = 5


def _scenes(count: int) -> str:
    return f"{count} scene" + ("" if count == 1 else "s")


def _chosen_scenes(step: StepSpec, step_plan: StepPlan) -> list[str]:
    """A dry run's word on scenes the pipeline chose, not the user: those a train step's ``sample`` picked, and how
    many a batch step's ``exclude_trained`` left out."""
    lines = []
    for job in step_plan.jobs:
        scenes = job.inputs.get("scenes") or []
        if step.kind == "train" and step.values.get("sample") is not None:
            names = ", ".join(Path(scene).name for scene in scenes[:DRY_RUN_SCENES_SHOWN])
            more = f" and {len(scenes) - DRY_RUN_SCENES_SHOWN} more" if len(scenes) > DRY_RUN_SCENES_SHOWN else ""
            lines.append(f"sample: {_scenes(len(scenes))}, {names}{more}")
        elif step.kind == "batch" and step.values.get("exclude_trained"):
            lines.append(f"exclude_trained: labels {_scenes(len(scenes))}, not those the model trains on")
        lines += job.notes
    return list(dict.fromkeys(lines))


def _reads_rewritten(job: Job, rewritten: dict[Path, str]) -> str | None:
    """"after 'step'" when one of the job's inputs is (or lies in) an output that step's jobs would rewrite."""
    for value in job.inputs.values():
        for path in value if isinstance(value, list) else [value]:
            for output, step in rewritten.items():
                if path == output or output in path.parents:
                    return f"after {step!r}"
    return None


def _run(pipeline: Pipeline, plans: dict[str, StepPlan], *, force: bool, only: list[str] | None, log: LogFn,
         started: float) -> RunResult:
    ctx = StepContext(pipeline, plans, _state_of(pipeline), [], log)
    failures: list[str] = []
    report: Path | None = None
    for step in pipeline.steps:
        step_plan = plans[step.name]
        if only and step.name not in only:
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "not selected", jobs=len(step_plan.jobs)))
            continue
        outcome = StepOutcome(step.name, step.kind, "skipped", jobs=len(step_plan.jobs))
        ctx.state.forget_other_jobs(step.name, [job.key for job in step_plan.jobs])
        for job in step_plan.jobs:
            label = step.name if not job.key else f"{step.name} ({job.key})"
            reason, params, inputs = _job_reason(ctx, step, job, force=force)
            if reason is None:
                continue
            for path in inputs.values():
                if not path.exists():
                    producer = next((s.name for s in pipeline.steps for j in plans[s.name].jobs
                                     if path in j.outputs.values()), None)
                    hint = f"; run step {producer!r} first" if producer else ""
                    raise PipelineError(f"{pipeline.path}: {step.where}: input {path} does not exist{hint}")
            log(f"{label}: running ({reason})")
            for note in job.notes:
                log(f"    {note}")
            input_prints = {key: fingerprint(path) for key, path in inputs.items()}
            for path in job.outputs.values():
                path.parent.mkdir(parents=True, exist_ok=True)
            tick = time.perf_counter()
            try:
                summary = RUNNERS[step.kind](step, job, ctx)
            except HsiClusterError as exc:  # the run stops here; what finished before stays done
                ctx.state.record_failure(step.name, step.kind, job.key, str(exc), seconds=time.perf_counter() - tick)
                ctx.state.save()
                exc.args = (f"step {label}: {exc}; the steps after it did not run (fix it and run the pipeline "
                            "again: finished steps are skipped)",)
                raise
            seconds = time.perf_counter() - tick
            outcome.status, outcome.reason = "ran", outcome.reason or reason
            outcome.jobs_run += 1
            outcome.seconds += seconds
            described = describe(step.kind, summary)
            log(f"{label}: done in {seconds:.1f} s" + (f"; {described}" if described else ""))
            if summary.get("failures"):
                outcome.status = "failed"
                failures += [f"{label}: {failure}" for failure in summary["failures"]]
                failed = f"{counted(len(summary['failures']), 'scene')} failed"
                log(f"{label}: {failed}; the step reruns next time")
                # the next run retries, saying why (the batch itself skips the scenes it finished)
                ctx.state.record_failure(step.name, step.kind, job.key, failed, seconds=seconds)
                ctx.state.save()
                continue
            ctx.state.record(step.name, step.kind, job.key, params=params, inputs=input_prints,
                             outputs={relative(p, pipeline.workdir): p for p in job.outputs.values()},
                             seconds=seconds, summary={k: v for k, v in summary.items() if k != "failures"})
            ctx.state.save()
            if step.kind == "report":
                report = job.outputs["output"]
        if outcome.status == "skipped":
            log(f"{step.name}: up to date, skipped")
            if step.kind == "report":
                report = step_plan.jobs[0].outputs["output"]
        outcome.summary = {job.key: (ctx.state.job(step.name, job.key) or {}).get("summary", {})
                           for job in step_plan.jobs}
        ctx.outcomes.append(outcome)
    ctx.state.save()
    return RunResult(pipeline, ctx.outcomes, time.perf_counter() - started, report=report, failures=failures)
