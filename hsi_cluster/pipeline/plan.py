"""Planning a pipeline: every step's jobs (paths, globs, seeds), resolved before anything runs.

Planning happens before anything runs, so a bad path or glob anywhere in the file is reported before
hours of training. Each step becomes one job, or one job per seed when it trains with ``seeds`` (or
reads the output of a step that did): such outputs get ``-seedN`` before their extension, or
``{seed}`` in the path is replaced.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hsi_cluster.errors import HsiClusterError, counted, first_line
from hsi_cluster.io.paths import ExcludedScenes, expand_scene_paths
from hsi_cluster.io.scene import scene_files
from hsi_cluster.pipeline.schema import SCHEMAS, Pipeline, StepSpec

Variant = int | None  # the seed a job belongs to, or None

#: Options that change how a step runs, not what it writes: changing them reruns nothing.
NOT_IN_RESULT = frozenset({"checkpoint_every", "workers", "scheduler", "retries"})
#: Options added after pipelines ran, with the value that gives the results of before: left out of the parameters
#: at that value, so that a state written before they existed stays up to date.
LATER_OPTIONS = {"match_brightness": False}


def relative(path: Path, workdir: Path) -> str:
    """``path`` relative to ``workdir`` (how the state file and the report name files)."""
    return os.path.relpath(path, workdir)


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
    notes: list[str] = field(default_factory=list)  # what the plan chose for the user (scenes a sample passed over)

    def input_files(self) -> list[Path]:
        """Every file the job reads (:func:`~hsi_cluster.io.scene.scene_files`: an ENVI header or binary, an EnMAP
        ``METADATA.XML`` included), to fingerprint."""
        paths: list[Path] = []
        for value in [*self.inputs.values(), *self.extra_inputs.values()]:
            for path in value if isinstance(value, list) else [value]:
                paths += scene_files(path)
        return paths

    def params(self, kind: str, workdir: Path) -> dict[str, Any]:
        """What decides the job's result (paths relative to ``workdir``): a change reruns it."""
        def rel(value: Any) -> Any:
            return [relative(p, workdir) for p in value] if isinstance(value, list) else relative(value, workdir)

        options = {k: v for k, v in self.options.items()
                   if k not in NOT_IN_RESULT and not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}
        return {"kind": kind, "options": options, "inputs": {k: rel(v) for k, v in self.inputs.items()},
                "extra_inputs": {k: rel(v) for k, v in self.extra_inputs.items()},
                "outputs": {k: rel(v) for k, v in self.outputs.items()}}


@dataclass
class StepPlan:
    """A step with its jobs, and what it produces for the steps after it (output key → seed → path)."""

    spec: StepSpec
    jobs: list[Job]
    produced: dict[str, dict[Variant, Path]]


def _variant_path(path: Path, template: str, variant: Variant) -> Path:
    if variant is None:
        return path
    if "{seed}" in template:
        return Path(str(path).replace("{seed}", str(variant)))
    return path.with_name(f"{path.stem}-seed{variant}{path.suffix}")


def sample_scenes(scenes: list[Path], count: int, *, passed_over: dict[Path, str] | None = None) -> list[Path]:
    """``count`` of the scenes, chosen by a hash of their file names, in their original order.

    Reproducible, independent of the folder the archive is in, and stable as an archive grows: a new
    scene enters the sample only when its hash is among the ``count`` smallest. With ``passed_over`` (filled with
    each one's reason), a file that cannot be opened as a scene (corrupt, empty, not a raster) gives its place to
    the next: an archive's bad file would stop the training.
    """
    ordered = sorted(scenes, key=lambda p: (hashlib.sha256(p.name.encode()).hexdigest(), str(p)))
    if passed_over is None:
        chosen = set(ordered[:count])
    else:
        chosen = set()
        for path in ordered:
            if len(chosen) == count:
                break
            reason = _unreadable(path)
            if reason is None:
                chosen.add(path)
            else:
                passed_over[path] = reason
    return [scene for scene in scenes if scene in chosen]


def _unreadable(path: Path) -> str | None:
    """Why a file cannot be read as a scene (empty, not a raster, truncated: its last block is read), or None.
    (Other band counts are left to the training, which names both scenes.)"""
    import warnings

    from hsi_cluster.io.scene import open_scene

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the training that reads it says them
            np.asarray(open_scene(path).data[:, -1:, -1:])  # the last block: a truncated file opens, but ends early
    except HsiClusterError as exc:
        return str(exc).removeprefix(f"{path.absolute()}: ").removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - a reader's own error on a damaged file: the reason, in one line
        return first_line(exc)
    return None


def _resolve_inputs(pipeline: Pipeline, step: StepSpec,
                    plans: dict[str, StepPlan]) -> dict[str, list[dict[Variant, Any]]]:
    """Per input key, per item: seed → path (a literal path or glob is the same for every seed)."""
    resolved: dict[str, list[dict[Variant, Any]]] = {}
    for key, spec in SCHEMAS[step.kind].items():
        value = step.values.get(key)
        if spec.role not in ("input", "inputs") or value is None:
            continue
        items = value if spec.role == "inputs" else [value]
        found: list[dict[Variant, Any]] = []
        for item, ref in zip(items, step.refs[key], strict=True):
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


def _variants(pipeline: Pipeline, step: StepSpec, inputs: dict[str, list[dict[Variant, Any]]]) -> list[Variant]:
    """The seeds the step runs for: those of the outputs it reads, its own ``seeds``, or [None]."""
    seeded = {frozenset(item) for items in inputs.values() for item in items if set(item) != {None}}
    if len(seeded) > 1:
        raise pipeline.error(step.where, "reads outputs made with different seed lists; give the steps it reads "
                                         "the same seeds")
    if step.kind == "report":
        return [None]
    if step.kind == "train" and step.values["seeds"] is not None:
        if seeded:
            raise pipeline.error(f"{step.where}.seeds", "the scenes it trains on already come per seed")
        return list(step.values["seeds"])
    if not seeded:
        return [None]
    return list(sorted(seed for seed in next(iter(seeded)) if seed is not None))


def _config_file(pipeline: Pipeline, step: StepSpec) -> Path | None:
    """The YAML file a train step's ``config:`` names (None for an inline mapping or none)."""
    config = step.values.get("config") if step.kind == "train" else None
    if not isinstance(config, str):
        return None
    path = Path(os.path.normpath(pipeline.folder / os.path.expanduser(config)))
    if not path.is_file():
        raise pipeline.error(f"{step.where}.config", f"{path} does not exist")
    return path


def _job_inputs(step: StepSpec, inputs: dict[str, list[dict[Variant, Any]]], variant: Variant) -> dict[str, Any]:
    """The inputs of the job for ``variant``: a path per input key, a flat list per list key."""
    job_inputs: dict[str, Any] = {}
    for key, items in inputs.items():
        picked = [item.get(variant, item.get(None)) if variant is not None else item[None] for item in items]
        if SCHEMAS[step.kind][key].role == "inputs":
            job_inputs[key] = [p for group in picked for p in (group if isinstance(group, list) else [group])]
        else:
            job_inputs[key] = picked[0]
    return job_inputs


def _job_outputs(pipeline: Pipeline, step: StepSpec, variant: Variant) -> dict[str, Path]:
    outputs = {}
    for key, spec in SCHEMAS[step.kind].items():
        if spec.role == "output" and step.values[key] is not None:
            template = step.values[key]
            if variant is None and "{seed}" in template:  # it would stay in the file name as written
                raise pipeline.error(f"{step.where}.{key}", f"{template!r} places a seed, but the step runs once, not "
                                     "per seed (it has no seeds list and reads no per-seed output); write the seed "
                                     "into the name, or give its train step a seeds list")
            path = Path(os.path.normpath(pipeline.workdir / os.path.expanduser(template)))
            outputs[key] = _variant_path(path, template, variant)
    return outputs


def _make_jobs(pipeline: Pipeline, step: StepSpec, inputs: dict[str, list[dict[Variant, Any]]]) -> list[Job]:
    """One job per seed, with resolved inputs, outputs and options."""
    values = step.values
    variants = _variants(pipeline, step, inputs)
    options = {k: values[k] for k, spec in SCHEMAS[step.kind].items() if spec.role == "option"}
    config_path = _config_file(pipeline, step)
    if config_path is not None:
        options["config"] = None
    jobs: list[Job] = []
    for variant in variants:
        job_inputs = _job_inputs(step, inputs, variant)
        if config_path is not None:
            job_inputs["config"] = config_path
        job_options = dict(options)
        if step.kind == "train":
            job_options.pop("seeds")
            job_options["seed"] = variant if variant is not None else values["seed"]
        jobs.append(Job(key="" if variant is None else f"seed{variant}", variant=variant, inputs=job_inputs,
                        outputs=_job_outputs(pipeline, step, variant), options=job_options))
    return jobs


Produced = dict[str, dict[Variant, Path]]


def _finish_train(pipeline: Pipeline, step: StepSpec, jobs: list[Job], plans: dict[str, StepPlan],
                  produced: Produced) -> Produced:
    """A train job's scenes: ``scene`` or ``scenes``, sampled when the step says ``sample``."""
    for job in jobs:
        scenes = [job.inputs["scene"]] if "scene" in job.inputs else _not_excluded(pipeline, step, job)
        if step.values["sample"] is not None:
            passed_over: dict[Path, str] = {}
            scenes = sample_scenes(scenes, step.values["sample"], passed_over=passed_over)
            job.notes += [f"sample: passed over {path.name}: {reason}" for path, reason in passed_over.items()]
            if len(scenes) < step.values["sample"]:
                job.notes.append(f"sample: {step.values['sample']} asked, and {len(scenes)} of the scenes can be "
                                 "trained on: all of those are")
        job.inputs.pop("scene", None)
        job.inputs["scenes"] = scenes
    return produced


def _not_excluded(pipeline: Pipeline, step: StepSpec, job: Job) -> list[Path]:
    """The job's ``scenes`` less those its step's ``exclude`` (paths or globs, relative to the pipeline file's
    folder) names, with a note of how many; refused when none is left."""
    excluded = ExcludedScenes(step.values.get("exclude") or [], base=pipeline.folder)
    scenes = [path for path in job.inputs["scenes"] if path not in excluded]
    for pattern in excluded.unused(job.inputs["scenes"]):
        job.notes.append(f"exclude: {pattern!r} matched none of the step's scenes")
    if len(scenes) < len(job.inputs["scenes"]):
        if not scenes:
            raise pipeline.error(f"{step.where}.exclude", "leaves out every scene")
        job.notes.append(f"exclude: left out {counted(len(job.inputs['scenes']) - len(scenes), 'scene')}")
    return scenes


def _finish_batch(pipeline: Pipeline, step: StepSpec, jobs: list[Job], plans: dict[str, StepPlan],
                  produced: Produced) -> Produced:
    """A batch job leaves out the scenes its model trained on (``exclude_trained``); its output is the manifest."""
    trained: set[Path] = set()
    if step.values["exclude_trained"]:
        trained = {p for job in plans[step.ref("model").step].jobs for p in job.inputs["scenes"]}
    for job in jobs:
        job.inputs["scenes"] = [p for p in _not_excluded(pipeline, step, job) if p not in trained]
        if not job.inputs["scenes"]:
            raise pipeline.error(f"{step.where}.scenes", "every scene is one the model was trained on; nothing left "
                                                         "to predict")
        job.outputs = {"manifest": job.outputs["output"] / "manifest.json"}
    return produced


def _finish_report(pipeline: Pipeline, step: StepSpec, jobs: list[Job], plans: dict[str, StepPlan],
                   produced: Produced) -> Produced:
    """A report writes Markdown and JSON and reads every output of the steps it summarises."""
    job = jobs[0]
    md = job.outputs["output"]
    if md.suffix.lower() == ".json":
        md = md.with_suffix(".md")
    job.outputs = {"output": md, "json": md.with_suffix(".json")}
    for name in step.values["summarise"]:
        for other in plans[name].jobs:
            for key, path in other.outputs.items():
                job.extra_inputs[f"{name}{'.' + other.key if other.key else ''}.{key}"] = path
    if step.values["kmeans"]:
        for name in step.values["summarise"]:
            _add_kmeans_inputs(job, name, plans)
    return {"output": {None: md}}


def _add_kmeans_inputs(job: Job, name: str, plans: dict[str, StepPlan]) -> None:
    """The scene, models and ground truth the k-means baseline of evaluate step ``name`` reads."""
    evaluation = plans[name]
    if evaluation.spec.kind != "evaluate":
        return
    predicted = plans[evaluation.spec.ref("labels").step]
    for other in predicted.jobs:
        job.extra_inputs[f"{name}.kmeans.scene"] = other.inputs["scene"]
        job.extra_inputs[f"{name}.kmeans.model{'.' + other.key if other.key else ''}"] = other.inputs["model"]
    for other in evaluation.jobs:
        job.extra_inputs[f"{name}.kmeans.truth"] = other.inputs["truth"]


_FINISH: dict[str, Callable[[Pipeline, StepSpec, list[Job], dict[str, StepPlan], Produced], Produced]] = {
    "train": _finish_train, "batch": _finish_batch, "report": _finish_report,
}


def _plan_step(pipeline: Pipeline, step: StepSpec, plans: dict[str, StepPlan]) -> StepPlan:
    """The jobs of one step, given the plans of the steps before it."""
    jobs = _make_jobs(pipeline, step, _resolve_inputs(pipeline, step, plans))
    produced: Produced = {key: {job.variant: job.outputs[key] for job in jobs} for key in jobs[0].outputs}
    finish = _FINISH.get(step.kind)
    if finish is not None:
        produced = finish(pipeline, step, jobs, plans, produced)
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
