"""Running a pipeline: plan every step (paths, globs, seeds), then run the steps that are out of date.

Planning happens before anything runs, so a bad path or glob anywhere in the file is reported before
hours of training. Each step becomes one job, or one job per seed when it trains with ``seeds`` (or
reads the output of a step that did): such outputs get ``-seedN`` before their extension, or
``{seed}`` in the path is replaced. A job is skipped when its state entry says it is up to date
(:mod:`hsi_cluster.pipeline.state`); ``force`` reruns every job, ``dry_run`` only says what would run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hsi_cluster import __version__
from hsi_cluster.errors import HsiClusterError
from hsi_cluster.io.files import write_text_atomic
from hsi_cluster.pipeline import report as report_format
from hsi_cluster.pipeline.schema import SCHEMAS, Pipeline, PipelineError, StepSpec, load_pipeline
from hsi_cluster.pipeline.state import State, WorkdirLock, companions, fingerprint

LogFn = Callable[[str], None]
Variant = int | None  # the seed a job belongs to, or None


@dataclass
class Job:
    """One unit of work of a step.

    Attributes:
        key: "" or "seedN": the job's name in the state file.
        variant: the seed it belongs to, or None.
        inputs: resolved inputs: a path, or a list of paths for list keys.
        outputs: resolved outputs (only the keys given), absolute.
        options: the step's other values (for train: ``seed`` is the job's seed).
    """

    key: str
    variant: Variant
    inputs: dict[str, Any]
    outputs: dict[str, Path]
    options: dict[str, Any]
    extra_inputs: dict[str, Path] = field(default_factory=dict)  # read too (k-means scenes, models, ...)


@dataclass
class StepPlan:
    """A step with its jobs, and what it produces for the steps after it (output key → seed → path)."""

    spec: StepSpec
    jobs: list[Job]
    produced: dict[str, dict[Variant, Path]]


@dataclass
class StepOutcome:
    """What happened to a step in this run.

    ``status``: "ran", "skipped" (up to date), "failed" (a batch with failed scenes), "would run" or
    "up to date" (dry run), or "not selected" (``only``). ``reason`` says why it ran.
    """

    name: str
    kind: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    jobs_run: int = 0
    jobs: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


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


# ------------------------------------------------------------------------------------------------
# planning


def _variant_path(path: Path, template: str, variant: Variant) -> Path:
    if variant is None:
        return path
    if "{seed}" in template:
        return Path(str(path).replace("{seed}", str(variant)))
    return path.with_name(f"{path.stem}-seed{variant}{path.suffix}")


def sample_scenes(scenes: list[Path], count: int) -> list[Path]:
    """``count`` of the scenes, chosen by a hash of their file names, in their original order.

    Reproducible, independent of the folder the archive is in, and stable as an archive grows: a new
    scene enters the sample only when its hash is among the ``count`` smallest.
    """
    if count >= len(scenes):
        return list(scenes)
    chosen = set(sorted(scenes, key=lambda p: (hashlib.sha256(p.name.encode()).hexdigest(), str(p)))[:count])
    return [scene for scene in scenes if scene in chosen]


def _resolve_inputs(pipeline: Pipeline, step: StepSpec,
                    plans: dict[str, StepPlan]) -> dict[str, list[dict[Variant, Any]]]:
    """Per input key, per item: seed → path (a literal path or glob is the same for every seed)."""
    from hsi_cluster.io.paths import expand_scene_paths

    resolved: dict[str, list[dict[Variant, Any]]] = {}
    for key, spec in SCHEMAS[step.kind].items():
        value = step.values.get(key)
        if spec.role not in ("input", "inputs") or value is None:
            continue
        items = value if spec.role == "inputs" else [value]
        found: list[dict[Variant, Any]] = []
        for item, ref in zip(items, step.refs[key]):
            at = f"{step.where}.{key}"
            if ref is not None:
                found.append(dict(plans[ref.step].produced[ref.key]))
                continue
            path = Path(os.path.normpath(pipeline.folder / os.path.expanduser(item)))
            if spec.role == "inputs":
                try:
                    paths = [Path(os.path.normpath(p)) for p in expand_scene_paths([path])]
                except HsiClusterError:
                    raise pipeline.error(at, f"{item!r} matches no scene (looked for {path})") from None
            else:
                paths = [path]
            for found_path in paths:
                if not found_path.exists():
                    raise pipeline.error(at, f"{found_path} does not exist (a file is relative to the pipeline "
                                             f"file's folder; an earlier step's output is written as in its "
                                             f"'output', or as \"@STEP\")")
            found.append({None: paths if spec.role == "inputs" else path})
        resolved[key] = found
    return resolved


def _plan_step(pipeline: Pipeline, step: StepSpec, plans: dict[str, StepPlan]) -> StepPlan:
    values, where = step.values, step.where
    inputs = _resolve_inputs(pipeline, step, plans)
    seeded = {frozenset(item) for items in inputs.values() for item in items if set(item) != {None}}
    if len(seeded) > 1:
        raise pipeline.error(where, "reads outputs made with different seed lists; give the steps it reads "
                                    "the same seeds")
    variants: list[Variant] = sorted(next(iter(seeded))) if seeded else [None]
    if step.kind == "train" and values["seeds"] is not None:
        if seeded:
            raise pipeline.error(f"{where}.seeds", "the scenes it trains on already come per seed")
        variants = list(values["seeds"])
    elif step.kind == "report":
        variants = [None]

    options = {k: values[k] for k, spec in SCHEMAS[step.kind].items() if spec.role == "option"}
    config = values.get("config") if step.kind == "train" else None
    if isinstance(config, str):
        config_path = Path(os.path.normpath(pipeline.folder / os.path.expanduser(config)))
        if not config_path.is_file():
            raise pipeline.error(f"{where}.config", f"{config_path} does not exist")
        options["config"] = None
    else:
        config_path = None

    jobs: list[Job] = []
    for variant in variants:
        job_inputs: dict[str, Any] = {}
        for key, items in inputs.items():
            picked = [item.get(variant, item.get(None)) if variant is not None else item[None] for item in items]
            if SCHEMAS[step.kind][key].role == "inputs":
                job_inputs[key] = [p for group in picked for p in (group if isinstance(group, list) else [group])]
            else:
                job_inputs[key] = picked[0]
        if config_path is not None:
            job_inputs["config"] = config_path
        outputs = {}
        for key, spec in SCHEMAS[step.kind].items():
            if spec.role == "output" and values[key] is not None:
                template = values[key]
                path = Path(os.path.normpath(pipeline.workdir / os.path.expanduser(template)))
                outputs[key] = _variant_path(path, template, variant)
        job_options = dict(options)
        if step.kind == "train":
            job_options.pop("seeds")
            job_options["seed"] = variant if variant is not None else values["seed"]
        jobs.append(Job(key="" if variant is None else f"seed{variant}", variant=variant, inputs=job_inputs,
                        outputs=outputs, options=job_options))

    produced: dict[str, dict[Variant, Path]] = {
        key: {job.variant: job.outputs[key] for job in jobs} for key in jobs[0].outputs}

    if step.kind == "train":
        for job in jobs:
            scenes = [job.inputs["scene"]] if "scene" in job.inputs else job.inputs["scenes"]
            if values["sample"] is not None:
                scenes = sample_scenes(scenes, values["sample"])
            job.inputs.pop("scene", None)
            job.inputs["scenes"] = scenes
    elif step.kind == "batch":
        trained: set[Path] = set()
        if values["exclude_trained"]:
            trained = {p for job in plans[step.refs["model"][0].step].jobs for p in job.inputs["scenes"]}
        for job in jobs:
            job.inputs["scenes"] = [p for p in job.inputs["scenes"] if p not in trained]
            if not job.inputs["scenes"]:
                raise pipeline.error(f"{where}.scenes", "every scene is one the model was trained on; nothing left "
                                                        "to predict")
            job.outputs = {"manifest": job.outputs["output"] / "manifest.json"}
    elif step.kind == "report":
        job = jobs[0]
        md = job.outputs["output"]
        if md.suffix.lower() == ".json":
            md = md.with_suffix(".md")
        job.outputs = {"output": md, "json": md.with_suffix(".json")}
        produced = {"output": {None: md}}
        for name in values["summarise"]:
            for other in plans[name].jobs:
                for key, path in other.outputs.items():
                    job.extra_inputs[f"{name}{'.' + other.key if other.key else ''}.{key}"] = path
        if values["kmeans"]:
            for name in values["summarise"]:
                evaluation = plans[name]
                if evaluation.spec.kind != "evaluate":
                    continue
                predicted = plans[evaluation.spec.refs["labels"][0].step]
                for other in predicted.jobs:
                    job.extra_inputs[f"{name}.kmeans.scene"] = other.inputs["scene"]
                    job.extra_inputs[f"{name}.kmeans.model{'.' + other.key if other.key else ''}"] = \
                        other.inputs["model"]
                for other in evaluation.jobs:
                    job.extra_inputs[f"{name}.kmeans.truth"] = other.inputs["truth"]
    return StepPlan(spec=step, jobs=jobs, produced=produced)


def plan(pipeline: Pipeline) -> list[StepPlan]:
    """Resolve every step's jobs (paths, globs, seeds) without running anything.

    Raises:
        PipelineError: a missing input file, a glob that matches nothing, mismatched seeds.
    """
    plans: dict[str, StepPlan] = {}
    for step in pipeline.steps:
        plans[step.name] = _plan_step(pipeline, step, plans)
    outputs: dict[Path, str] = {}
    for step_plan in plans.values():
        for job in step_plan.jobs:
            for path in job.outputs.values():
                if path in outputs and outputs[path] != step_plan.spec.name:
                    raise pipeline.error(step_plan.spec.where, f"writes {path}, which step {outputs[path]!r} also "
                                                               "writes; give each output its own path")
                outputs[path] = step_plan.spec.name
    return list(plans.values())


# ------------------------------------------------------------------------------------------------
# fingerprints and parameters


def _rel(path: Path, workdir: Path) -> str:
    return os.path.relpath(path, workdir)


def _input_files(job: Job) -> list[Path]:
    paths: list[Path] = []
    for value in [*job.inputs.values(), *job.extra_inputs.values()]:
        for path in value if isinstance(value, list) else [value]:
            paths += [path, *companions(path)]
    return paths


#: Options that change how a step runs, not what it writes: changing them reruns nothing.
NOT_IN_RESULT = frozenset({"checkpoint_every", "workers", "scheduler", "retries"})


def _params(step: StepSpec, job: Job, workdir: Path) -> dict[str, Any]:
    def rel(value: Any) -> Any:
        return [_rel(p, workdir) for p in value] if isinstance(value, list) else _rel(value, workdir)

    options = {k: v for k, v in job.options.items() if k not in NOT_IN_RESULT}
    return {"kind": step.kind, "options": options, "inputs": {k: rel(v) for k, v in job.inputs.items()},
            "extra_inputs": {k: rel(v) for k, v in job.extra_inputs.items()},
            "outputs": {k: rel(v) for k, v in job.outputs.items()}}


# ------------------------------------------------------------------------------------------------
# the steps


@dataclass
class _Context:
    pipeline: Pipeline
    plans: dict[str, StepPlan]
    state: State
    outcomes: list[StepOutcome]
    log: LogFn


def _write_json(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2))


def _run_ingest(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    from hsi_cluster.io import ingest

    o = job.options
    store = ingest(job.inputs["scene"], job.outputs["output"], chunk=o["chunk"], overwrite=True, var=o["var"],
                   workers=o["workers"])
    return {"output": str(store)}


def _train_config(job: Job) -> Any:
    from hsi_cluster.config import load_config

    o = job.options
    return load_config(o["preset"], job.inputs.get("config"), inline=o["config"] if isinstance(o["config"], dict) else None,
                       epochs=o["epochs"], steps=o["steps"], batch_size=o["batch_size"])


def _run_train(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    from hsi_cluster.checkpoint import CheckpointError
    from hsi_cluster.train import partial_checkpoint_path, train

    o, output = job.options, job.outputs["output"]
    config = _train_config(job)
    partial = partial_checkpoint_path(output)
    resume = partial.exists()  # a run of this step was interrupted: continue it when it is the same job

    def attempt(resume: bool) -> Any:
        return train(job.inputs["scenes"], n_clusters=o["clusters"], output=output, config=config, seed=o["seed"],
                     device=o["device"], resume=resume, overwrite=True, work_dir=ctx.pipeline.workdir / "cache",
                     checkpoint_every=o["checkpoint_every"], log=lambda message: ctx.log(f"    {message}"))

    try:
        result = attempt(resume)
    except CheckpointError:
        if not resume:
            raise
        ctx.log(f"    {partial.name} is from another configuration; starting afresh")
        partial.unlink(missing_ok=True)
        result = attempt(False)
    return {"steps": result.steps, "epochs": result.epochs, "train_seconds": round(result.seconds, 1),
            "samples_per_second": round(result.samples_per_second, 1)}


def _run_predict(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    from hsi_cluster.predict import predict_scene

    o = job.options
    result = predict_scene(job.inputs["scene"], job.inputs["model"], job.outputs["output"], tiles=o["tiles"],
                           device=o["device"], confidence_path=job.outputs.get("confidence"),
                           quicklook_path=job.outputs.get("quicklook"), overwrite=True, resume=True)
    return {"tiles": result.tiles, "valid_pixels": result.valid_pixels,
            "megapixels_per_second": result.megapixels_per_second}


def _run_evaluate(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    from hsi_cluster.evaluate import score_clustering
    from hsi_cluster.io.labels import read_label_pair

    o = job.options
    predicted, invalid, reference = read_label_pair(job.inputs["labels"], job.inputs["truth"], var=o["var"])
    scores = score_clustering(predicted, reference, unlabelled=o["unlabelled"],
                              invalid_pred="auto" if invalid is None else invalid)
    _write_json(job.outputs["output"], {"step": step.name, "seed": job.variant, "title": o["title"] or step.name,
                                        "labels": str(job.inputs["labels"]), "truth": str(job.inputs["truth"]),
                                        "unlabelled": o["unlabelled"], "scores": scores.to_dict()})
    return {name: getattr(scores, name) for name in ("acc", "nmi", "kappa", "ari")}


def _run_batch(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    from hsi_cluster.batch import run_batch

    o = job.options
    result = run_batch([str(p) for p in job.inputs["scenes"]], job.inputs["model"], job.outputs["manifest"].parent,
                       tiles=o["tiles"], scheduler=o["scheduler"], workers=o["workers"], retries=o["retries"],
                       log=lambda message: ctx.log(f"    {message}"))
    counts = {status: sum(1 for r in result.records if r.get("status") == status)
              for status in ("done", "skipped", "failed")}
    failed = [f"{r.get('source')}: {r.get('error')}" for r in result.failed]
    return {**counts, "failures": failed}


def _kmeans_section(ctx: _Context, evaluation: StepPlan, seeds: list[int]) -> dict[str, Any]:
    from hsi_cluster.baseline import kmeans_baseline, standardised_pixels
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.io.labels import read_label_map

    predicted = ctx.plans[evaluation.spec.refs["labels"][0].step]
    scene = predicted.jobs[0].inputs["scene"]
    k = load_checkpoint(predicted.jobs[0].inputs["model"]).n_clusters
    o = evaluation.jobs[0].options
    truth, _ = read_label_map(evaluation.jobs[0].inputs["truth"], var=o["var"])
    runs, prepared = [], None
    for seed in seeds:
        ctx.log(f"    k-means (K = {k}, seed {seed}) on {scene.name}")
        prepared = prepared or standardised_pixels(scene)  # read once for all seeds
        runs.append({"seed": seed, **kmeans_baseline(scene, truth, k, seed=seed, unlabelled=o["unlabelled"],
                                                      prepared=prepared).to_dict()})
    return {"kmeans": runs, "kmeans_mean": report_format.mean_std(runs), "kmeans_k": k, "kmeans_inits": 10,
            "kmeans_scene": _rel(scene, ctx.pipeline.workdir)}


def _run_report(step: StepSpec, job: Job, ctx: _Context) -> dict[str, Any]:
    workdir = ctx.pipeline.workdir
    evaluations, batches = [], []
    for name in step.values["summarise"]:
        summarised = ctx.plans[name]
        if summarised.spec.kind == "evaluate":
            runs = []
            for other in summarised.jobs:
                saved = json.loads(other.outputs["output"].read_text())
                runs.append({"seed": other.variant, "labels": _rel(Path(saved["labels"]), workdir), **saved["scores"]})
            section = {"step": name, "title": summarised.jobs[0].options["title"] or name,
                       "truth": _rel(summarised.jobs[0].inputs["truth"], workdir), "runs": runs,
                       "mean": report_format.mean_std(runs)}
            if step.values["kmeans"]:
                section.update(_kmeans_section(ctx, summarised, step.values["kmeans"]))
            evaluations.append(section)
        else:
            for other in summarised.jobs:
                manifest = json.loads(other.outputs["manifest"].read_text())
                records = list((manifest.get("scenes") or {}).values())
                batches.append({"step": name if not other.key else f"{name} ({other.key})",
                                "manifest": _rel(other.outputs["manifest"], workdir), "records": records,
                                "counts": {s: sum(1 for r in records if r.get("status") == s)
                                           for s in ("done", "skipped", "failed")},
                                "valid_pixels": sum(int(r.get("valid_pixels") or 0) for r in records)})
    statuses = {outcome.name: outcome for outcome in ctx.outcomes}
    steps = []
    for other in ctx.pipeline.steps:
        if other.name == step.name:
            continue
        outcome = statuses.get(other.name)
        status = "–" if outcome is None else outcome.status
        if outcome is not None and outcome.status == "ran" and outcome.jobs_run < outcome.jobs:
            status = f"ran {outcome.jobs_run} of {outcome.jobs} jobs"
        steps.append({"step": other.name, "kind": other.kind, "status": status,
                      "seconds": ctx.state.seconds(other.name), "jobs": len(ctx.plans[other.name].jobs),
                      "finished": ctx.state.finished(other.name)})
    content = {"title": step.values["title"] or ctx.pipeline.name, "pipeline": ctx.pipeline.name,
               "description": ctx.pipeline.description, "file": str(ctx.pipeline.path), "workdir": str(workdir),
               "library_version": __version__,
               "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "evaluations": evaluations, "batches": batches, "steps": steps}
    _write_json(job.outputs["json"], content)
    write_text_atomic(job.outputs["output"], report_format.to_markdown(content))
    return {"report": str(job.outputs["output"])}


RUNNERS: dict[str, Callable[[StepSpec, Job, _Context], dict[str, Any]]] = {
    "ingest": _run_ingest, "train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate,
    "batch": _run_batch, "report": _run_report,
}


def describe(kind: str, summary: dict[str, Any]) -> str:
    """One line about a finished job of a step of ``kind`` from its summary ("" when there is nothing to say)."""
    if kind == "train":
        return f"{summary['steps']} steps, {summary['epochs']} epochs, {summary['samples_per_second']:.0f} samples/s"
    if kind == "predict":
        return f"{summary['valid_pixels']} labelled pixels, {summary['megapixels_per_second']:.2f} Mpix/s"
    if kind == "evaluate":
        return "  ".join(f"{k.upper() if k != 'kappa' else 'Kappa'} {v:.3f}" for k, v in summary.items())
    if kind == "batch":
        return f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
    return ""


# ------------------------------------------------------------------------------------------------
# the run


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
    with WorkdirLock(pipeline.workdir):
        return _run(pipeline, plans, force=force, only=only, log=log, started=started)


def _job_reason(ctx: _Context, step: StepSpec, job: Job, *,
                force: bool) -> tuple[str | None, dict[str, Any], dict[str, Path]]:
    """(why the job must run or None, its parameters, its input files by name)."""
    workdir = ctx.pipeline.workdir
    params = _params(step, job, workdir)
    if step.kind == "report":  # its timings table changes whenever another step runs
        params["timings"] = {other.name: [ctx.state.finished(other.name), ctx.state.seconds(other.name)]
                             for other in ctx.pipeline.steps if other.name != step.name}
        params["title"] = ctx.pipeline.description, ctx.pipeline.name
    inputs = {_rel(p, workdir): p for p in _input_files(job)}
    reason = ctx.state.why_run(step.name, job.key, params, inputs, {_rel(p, workdir): p for p in job.outputs.values()})
    if force:
        reason = "forced"
    return reason, params, inputs


def _dry_run(pipeline: Pipeline, plans: dict[str, StepPlan], *, force: bool, only: list[str] | None, log: LogFn,
             started: float) -> RunResult:
    ctx = _Context(pipeline, plans, State.load(pipeline.workdir), [], log)
    would: set[str] = set()
    for step in pipeline.steps:
        step_plan = plans[step.name]
        if only and step.name not in only:
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "not selected", jobs=len(step_plan.jobs)))
            continue
        reasons = [_job_reason(ctx, step, job, force=force)[0] for job in step_plan.jobs]
        # a report also shows every step's timings, so it follows any of them
        depends = {s.name for s in pipeline.steps[:step.index]} if step.kind == "report" else step.upstream()
        after = sorted(depends & would) if not only else []
        if any(reasons) or after:
            reason = next((r for r in reasons if r), None) or f"after {', '.join(repr(a) for a in after)}"
            count = sum(1 for r in reasons if r) if not after else len(reasons)
            would.add(step.name)
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "would run", reason, jobs_run=count,
                                            jobs=len(reasons)))
            jobs = f" ({count} of {len(reasons)} jobs)" if len(reasons) > 1 else ""
            log(f"{step.name}: would run{jobs}: {reason}")
        else:
            ctx.outcomes.append(StepOutcome(step.name, step.kind, "up to date", jobs=len(reasons)))
            log(f"{step.name}: up to date")
    return RunResult(pipeline, ctx.outcomes, time.perf_counter() - started)


def _run(pipeline: Pipeline, plans: dict[str, StepPlan], *, force: bool, only: list[str] | None, log: LogFn,
         started: float) -> RunResult:
    ctx = _Context(pipeline, plans, State.load(pipeline.workdir), [], log)
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
            for key, path in inputs.items():
                if not path.exists():
                    producer = next((s.name for s in pipeline.steps for j in plans[s.name].jobs
                                     if path in j.outputs.values()), None)
                    hint = f"; run step {producer!r} first" if producer else ""
                    raise PipelineError(f"{pipeline.path}: {step.where}: input {path} does not exist{hint}")
            log(f"{label}: running ({reason})")
            input_prints = {key: fingerprint(path) for key, path in inputs.items()}
            for path in job.outputs.values():
                path.parent.mkdir(parents=True, exist_ok=True)
            tick = time.perf_counter()
            summary = RUNNERS[step.kind](step, job, ctx)
            seconds = time.perf_counter() - tick
            outcome.status, outcome.reason = "ran", outcome.reason or reason
            outcome.jobs_run += 1
            outcome.seconds += seconds
            described = describe(step.kind, summary)
            log(f"{label}: done in {seconds:.1f} s" + (f"; {described}" if described else ""))
            if summary.get("failures"):
                outcome.status = "failed"
                failures += [f"{label}: {failure}" for failure in summary["failures"]]
                log(f"{label}: {len(summary['failures'])} scene(s) failed; the step reruns next time")
                ctx.state.forget_job(step.name, job.key)  # the next run retries (the batch skips finished scenes)
                ctx.state.save()
                continue
            ctx.state.record(step.name, step.kind, job.key, params=params, inputs=input_prints,
                             outputs={_rel(p, pipeline.workdir): p for p in job.outputs.values()},
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
