"""The six kinds of step: each runs one job with the library and returns a summary for the state file.

A runner is ``(step, job, context) → summary``; :data:`RUNNERS` maps a kind to it and
:func:`describe` turns a summary into one line of the log.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsi_cluster import __version__
from hsi_cluster.io.files import write_text_atomic
from hsi_cluster.pipeline import report as report_format
from hsi_cluster.pipeline.plan import Job, StepPlan, relative
from hsi_cluster.pipeline.schema import Pipeline, StepSpec
from hsi_cluster.pipeline.state import State

LogFn = Callable[[str], None]


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
class StepContext:
    """What a step's runner sees besides its job: the pipeline, every plan, the state, the outcomes so far."""

    pipeline: Pipeline
    plans: dict[str, StepPlan]
    state: State
    outcomes: list[StepOutcome]
    log: LogFn


def _write_json(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=2))


def _run_ingest(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
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


def _run_train(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
    from hsi_cluster.checkpoint import CheckpointError
    from hsi_cluster.train import partial_checkpoint_path, train

    o, output = job.options, job.outputs["output"]
    config = _train_config(job)
    partial = partial_checkpoint_path(output)
    resume = partial.exists()  # a run of this step was interrupted: continue it when it is the same job

    def attempt(resume: bool) -> Any:
        return train(job.inputs["scenes"], n_clusters=o["clusters"], output=output, config=config, seed=o["seed"],
                     device=o["device"], resume=resume, overwrite=True, work_dir=ctx.pipeline.workdir / "cache",
                     checkpoint_every=o["checkpoint_every"], log=lambda message: ctx.log(f"    {message}"),
                     k_max=o.get("k_max"))

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


def _run_predict(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
    from hsi_cluster.predict import predict_scene, result_warnings

    o = job.options
    result = predict_scene(job.inputs["scene"], job.inputs["model"], job.outputs["output"], tiles=o["tiles"],
                           device=o["device"], confidence_path=job.outputs.get("confidence"),
                           quicklook_path=job.outputs.get("quicklook"), overwrite=True, resume=True,
                           match_brightness=o["match_brightness"])
    for warning in result_warnings(job.inputs["scene"], result, match_brightness=o["match_brightness"]):  # as predict
        ctx.log(f"    warning: {warning}")
    return {"tiles": result.tiles, "valid_pixels": result.valid_pixels,
            "megapixels_per_second": result.megapixels_per_second}


def _run_evaluate(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
    from hsi_cluster.evaluate import score_label_files

    o = job.options
    unlabelled = _unlabelled(o, job.inputs["truth"])
    # "auto" when not given, as the command passes it: the truth then warns of a value that looks unlabelled
    scores = score_label_files(job.inputs["labels"], job.inputs["truth"], var=o["var"], unlabelled=_given(o))
    _write_json(job.outputs["output"], {"step": step.name, "seed": job.variant, "title": o["title"] or step.name,
                                        "labels": str(job.inputs["labels"]), "truth": str(job.inputs["truth"]),
                                        "unlabelled": unlabelled, "scores": scores.to_dict()})
    return {name: getattr(scores, name) for name in ("acc", "nmi", "kappa", "ari")}


def _unlabelled(options: dict[str, Any], truth: Path) -> int | None:
    """The evaluate step's ``unlabelled``: as given, else the truth's nodata value, else 0 (as ``hsicluster evaluate``)."""
    from hsi_cluster.io.labels import truth_unlabelled

    return truth_unlabelled(truth, _given(options))


def _given(options: dict[str, Any]) -> int | str | None:
    """``unlabelled`` as :func:`~hsi_cluster.evaluate.score_label_files` takes it: absent → "auto", "none" → None."""
    value = options["unlabelled"]
    return "auto" if value is None else None if value == "none" else value


def _run_batch(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
    from hsi_cluster.batch import failure_text, run_batch

    o = job.options
    result = run_batch([str(p) for p in job.inputs["scenes"]], job.inputs["model"], job.outputs["manifest"].parent,
                       tiles=o["tiles"], scheduler=o["scheduler"], workers=o["workers"], retries=o["retries"],
                       log=lambda message: ctx.log(f"    {message}"), remove_other_models=True,
                       match_brightness=o["match_brightness"])
    for record in result.done:  # what `hsicluster batch` prints of each scene (a worker's stderr is not the user's)
        for warning in record.get("warnings") or []:
            ctx.log(f"    warning: {warning}")
    if result.stale_stac:
        ctx.log(f"    warning: removed {len(result.stale_stac)} STAC files of an earlier batch --stac run that "
                "described labels this step replaced")
    counts = {status: sum(1 for r in result.records if r.get("status") == status)
              for status in ("done", "skipped", "failed")}
    failed = [failure_text(r) for r in result.failed]
    return {**counts, "failures": failed}


def _kmeans_section(ctx: StepContext, evaluation: StepPlan, seeds: list[int]) -> dict[str, Any]:
    from hsi_cluster.baseline import kmeans_baseline, standardised_pixels
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.io.labels import read_label_map

    predicted = ctx.plans[evaluation.spec.ref("labels").step]
    scene = predicted.jobs[0].inputs["scene"]
    k = load_checkpoint(predicted.jobs[0].inputs["model"]).n_clusters
    o = evaluation.jobs[0].options
    truth, _ = read_label_map(evaluation.jobs[0].inputs["truth"], var=o["var"])
    runs, prepared = [], None
    for seed in seeds:
        ctx.log(f"    k-means (K = {k}, seed {seed}) on {scene.name}")
        prepared = prepared or standardised_pixels(scene)  # read once for all seeds
        runs.append({"seed": seed, **kmeans_baseline(scene, truth, k, seed=seed,
                                                      unlabelled=_unlabelled(o, evaluation.jobs[0].inputs["truth"]),
                                                      prepared=prepared).to_dict()})
    return {"kmeans": runs, "kmeans_mean": report_format.mean_std(runs), "kmeans_k": k, "kmeans_inits": 10,
            "kmeans_scene": relative(scene, ctx.pipeline.workdir)}


def _run_report(step: StepSpec, job: Job, ctx: StepContext) -> dict[str, Any]:
    workdir = ctx.pipeline.workdir
    evaluations, batches = [], []
    for name in step.values["summarise"]:
        summarised = ctx.plans[name]
        if summarised.spec.kind == "evaluate":
            runs = []
            for other in summarised.jobs:
                saved = json.loads(other.outputs["output"].read_text())
                runs.append({"seed": other.variant, "labels": relative(Path(saved["labels"]), workdir), **saved["scores"]})
            section = {"step": name, "title": summarised.jobs[0].options["title"] or name,
                       "truth": relative(summarised.jobs[0].inputs["truth"], workdir), "runs": runs,
                       "mean": report_format.mean_std(runs)}
            if step.values["kmeans"]:
                section.update(_kmeans_section(ctx, summarised, step.values["kmeans"]))
            evaluations.append(section)
        else:
            for other in summarised.jobs:
                manifest = json.loads(other.outputs["manifest"].read_text())
                # this job's scenes: the manifest also keeps those of earlier runs (scenes since removed)
                scenes = {str(Path(scene).absolute()) for scene in other.inputs["scenes"]}
                records = [record for source, record in (manifest.get("scenes") or {}).items() if source in scenes]
                batches.append({"step": name if not other.key else f"{name} ({other.key})",
                                "manifest": relative(other.outputs["manifest"], workdir), "records": records,
                                "counts": {s: sum(1 for r in records if r.get("status") == s)
                                           for s in ("done", "skipped", "failed")},
                                "valid_pixels": sum(int(r.get("valid_pixels") or 0) for r in records)})
    statuses = {outcome.name: outcome for outcome in ctx.outcomes}
    steps = []
    for listed in ctx.pipeline.steps:
        if listed.name == step.name:
            continue
        outcome = statuses.get(listed.name)
        status = "–" if outcome is None else outcome.status
        if outcome is not None and outcome.status == "ran" and outcome.jobs_run < outcome.jobs:
            status = f"ran {outcome.jobs_run} of {outcome.jobs} jobs"
        steps.append({"step": listed.name, "kind": listed.kind, "status": status,
                      "seconds": ctx.state.seconds(listed.name), "jobs": len(ctx.plans[listed.name].jobs),
                      "finished": ctx.state.finished(listed.name)})
    content = {"title": step.values["title"] or ctx.pipeline.name, "pipeline": ctx.pipeline.name,
               "description": ctx.pipeline.description, "file": str(ctx.pipeline.path), "workdir": str(workdir),
               "library_version": __version__,
               "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "evaluations": evaluations, "batches": batches, "steps": steps}
    _write_json(job.outputs["json"], content)
    write_text_atomic(job.outputs["output"], report_format.to_markdown(content))
    return {"report": str(job.outputs["output"])}


RUNNERS: dict[str, Callable[[StepSpec, Job, StepContext], dict[str, Any]]] = {
    "ingest": _run_ingest, "train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate,
    "batch": _run_batch, "report": _run_report,
}


def describe(kind: str, summary: dict[str, Any]) -> str:
    """One line about a finished job of a step of ``kind`` from its summary ("" when there is nothing to say)."""
    if kind == "train":
        epochs = f"{summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'}"
        return f"{summary['steps']} steps, {epochs}, {summary['samples_per_second']:.0f} samples/s"
    if kind == "predict":
        return f"{summary['valid_pixels']} labelled pixels, {summary['megapixels_per_second']:.3g} Mpix/s"
    if kind == "evaluate":
        return "  ".join(f"{k.upper() if k != 'kappa' else 'Kappa'} {v:.3f}" for k, v in summary.items())
    if kind == "batch":
        return f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
    return ""
