"""Pipeline files: reading the YAML and checking it against the schema.

A pipeline file is a mapping with ``name`` (default: the file's stem), ``description``, ``workdir``
(default ``runs/NAME``; relative to the current directory) and ``steps``: a list of mappings, each
with a ``kind`` (:data:`KINDS`), an optional ``name`` (default: the kind, numbered when a kind
occurs more than once) and the keys of :data:`SCHEMAS`. Everything wrong with a file is reported
as one line naming the file and the key path, e.g.
``pipelines/x.yaml: steps[2].tiles: expected an integer ≥ 8, got 'big'`` (steps count from 0).

References: an input (``scene``, ``scenes``, ``model``, ``labels``) written ``@NAME``, or written
exactly as an earlier step's ``output``, is that step's output; any other input is a path relative
to the pipeline file's folder (globs allowed in ``scenes``). Outputs are relative to ``workdir``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsi_cluster.errors import HsiClusterError
from hsi_cluster.geo import DEFAULT_TILE, MIN_TILE
from hsi_cluster.model.choose_k import K_MAX_MIN

KINDS = ("ingest", "train", "predict", "evaluate", "batch", "report")

#: Which kinds of step an input key may refer to.
PRODUCERS: dict[str, tuple[str, ...]] = {"scene": ("ingest",), "scenes": ("ingest",), "model": ("train",),
                                         "labels": ("predict",), "truth": ("predict",)}


class PipelineError(HsiClusterError):
    """A pipeline file is unreadable or does not follow the schema."""


class _Invalid(Exception):
    """Raised by a checker: the value does not fit (the key's ``expected`` text says what would)."""


@dataclass(frozen=True)
class Key:
    """One key of a step (or of the top level).

    Attributes:
        check: returns the value (possibly normalised) or raises :class:`_Invalid`.
        expected: what the value should be, for messages ("an integer ≥ 8").
        required: the key must be given.
        default: the value when the key is absent or null.
        role: "input" (a path or a reference), "inputs" (a list of those, globs allowed),
            "output" (a path in workdir) or "option".
    """

    check: Callable[[Any], Any]
    expected: str
    required: bool = False
    default: Any = None
    role: str = "option"

    def but(self, **changes: Any) -> Key:
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int | None = None) -> Key:
    def check(value: Any) -> int:
        if not _is_int(value) or (minimum is not None and value < minimum):
            raise _Invalid
        return value

    return Key(check, "an integer" + (f" ≥ {minimum}" if minimum is not None else ""))


def cluster_count() -> Key:
    def check(value: Any) -> int | str:
        if value == "auto" or (_is_int(value) and value >= 2):
            return value
        raise _Invalid

    return Key(check, "an integer ≥ 2 or 'auto'")


def unlabelled_value() -> Key:
    """An evaluate step's ``unlabelled``: a whole ground-truth value, or "none" (score every pixel)."""
    def check(value: Any) -> int | str:
        if _is_int(value) or (isinstance(value, str) and value.strip().lower() == "none"):
            return value if _is_int(value) else "none"
        raise _Invalid

    return Key(check, "an integer, or 'none' to score every pixel")


def text() -> Key:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid
        return value

    return Key(check, "a non-empty string")


def boolean() -> Key:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid
        return value

    return Key(check, "true or false")


def choice(*values: str) -> Key:
    def check(value: Any) -> str:
        if value not in values:
            raise _Invalid
        return value

    return Key(check, "one of " + ", ".join(values))


def _paths(value: Any) -> list[str]:
    """A path or glob, or a non-empty list of them, as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise _Invalid
    return list(items)


def path_list() -> Key:
    return Key(_paths, "a path or glob, or a non-empty list of them", role="inputs")


def pattern_list() -> Key:
    """Paths or globs that are not inputs (matching nothing is no error): ``exclude``."""
    return Key(_paths, "a path or glob, or a non-empty list of them")


def int_list(what: str) -> Key:
    def check(value: Any) -> list[int]:
        if not isinstance(value, list) or not value or not all(_is_int(v) for v in value) or \
                len(set(value)) != len(value):
            raise _Invalid
        return list(value)

    return Key(check, f"a non-empty list of distinct integer {what}")


def name_list() -> Key:
    def check(value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            raise _Invalid
        return [v.removeprefix("@") for v in items]

    return Key(check, "a step name or a list of step names")


def kmeans_seeds() -> Key:
    def check(value: Any) -> list[int]:
        if value is True:
            return [0]
        if value is False:
            return []
        return int_list("seeds").check(value)

    return Key(check, "true, false or a non-empty list of distinct integer seeds", default=[])


def train_config() -> Key:
    def check(value: Any) -> dict[str, Any] | str:
        if isinstance(value, dict) or (isinstance(value, str) and value.strip()):
            return value
        raise _Invalid

    return Key(check, "a mapping of training options or the path of a YAML file of them")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def identifier() -> Key:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise _Invalid
        return value

    return Key(check, "a name of letters, digits, '_', '-' and '.'")


def _input() -> Key:
    return text().but(expected="a path or @STEP", role="input")


def _output(default: str | None = None) -> Key:
    return text().but(expected="a path (relative to workdir)", role="output", required=default is None,
                      default=default)


DEVICE = choice("auto", "cpu", "cuda").but(default="auto")

#: The keys of each kind of step (besides ``kind`` and ``name``).
SCHEMAS: dict[str, dict[str, Key]] = {
    "ingest": {
        "scene": _input().but(required=True),
        "output": _output(),
        "chunk": integer(16),
        "var": text(),
        "workers": integer(1),
    },
    "train": {
        "scene": _input(),
        "scenes": path_list(),
        "exclude": pattern_list(),
        "sample": integer(1),
        "clusters": cluster_count().but(required=True),
        "k_max": integer(K_MAX_MIN),
        "output": _output(),
        "preset": choice("fast", "paper").but(default="fast"),
        "config": train_config(),
        "epochs": integer(1),
        "steps": integer(1),
        "batch_size": integer(2),
        "device": DEVICE,
        "seed": integer().but(default=0),
        "seeds": int_list("seeds"),
        "checkpoint_every": integer(1).but(default=100),
    },
    "predict": {
        "scene": _input().but(required=True),
        "model": _input().but(required=True),
        "output": _output(),
        "tiles": integer(MIN_TILE).but(default=DEFAULT_TILE),
        "device": DEVICE,
        "confidence": _output().but(required=False),
        "quicklook": _output().but(required=False),
        "match_brightness": boolean().but(default=False),
    },
    "evaluate": {
        "labels": _input().but(required=True),
        "truth": _input().but(required=True),
        "output": _output(),
        "unlabelled": unlabelled_value(),  # absent: the truth's nodata value, else 0 (as `hsicluster evaluate`)
        "var": text(),
        "title": text(),
    },
    "batch": {
        "scenes": path_list().but(required=True),
        "exclude": pattern_list(),
        "model": _input().but(required=True),
        "output": _output(),
        "tiles": integer(MIN_TILE).but(default=DEFAULT_TILE),
        "scheduler": text(),
        "workers": integer(1),
        "retries": integer(0).but(default=2),
        "exclude_trained": boolean().but(default=False),
        "match_brightness": boolean().but(default=False),
    },
    "report": {
        "output": _output("report.md"),
        "summarise": name_list(),
        "kmeans": kmeans_seeds(),
        "title": text(),
    },
}

TOP_LEVEL: dict[str, Key] = {
    "name": identifier(),
    "description": text(),
    "workdir": text(),
    "steps": Key(lambda v: v, "a non-empty list of steps", required=True),
}


@dataclass(frozen=True)
class Ref:
    """An input that is an earlier step's output: ``step``'s ``key`` (output, confidence, quicklook)."""

    step: str
    key: str = "output"


@dataclass(frozen=True)
class StepSpec:
    """A validated step.

    Attributes:
        index: position in ``steps`` (from 0).
        name: unique name.
        kind: one of :data:`KINDS`.
        values: every key of its schema, defaults filled in.
        given: the keys written in the file.
        refs: for each input key, per item, the :class:`Ref` it stands for, or None for a path.
    """

    index: int
    name: str
    kind: str
    values: dict[str, Any]
    given: frozenset[str]
    refs: dict[str, list[Ref | None]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"steps[{self.index}]"

    def ref(self, key: str) -> Ref:
        """The step output that input ``key`` (a single input) refers to.

        Raises:
            KeyError: the input is a path, not a reference.
        """
        found = self.refs.get(key, [None])[0]
        if found is None:
            raise KeyError(f"{self.where}.{key} is not a reference to another step's output")
        return found

    def upstream(self) -> set[str]:
        """Names of the steps whose outputs this one reads directly."""
        names = {ref.step for refs in self.refs.values() for ref in refs if ref is not None}
        if self.kind == "report":
            names.update(self.values["summarise"] or [])
        return names


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file.

    Attributes:
        path: the file as given (used in messages).
        folder: the file's folder, absolute: inputs are relative to it.
        name: the pipeline's name.
        description: free text, or None.
        workdir: where outputs and the state file go, absolute.
        steps: the steps, in file order.
    """

    path: Path
    folder: Path
    name: str
    description: str | None
    workdir: Path
    steps: tuple[StepSpec, ...]

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def error(self, where: str, message: str) -> PipelineError:
        """A one-line error naming the file and the key path."""
        return PipelineError(f"{self.path}: {where}: {message}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice",
                                                    key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of a file (duplicate keys refused), with one-line errors."""
    try:
        content = path.read_text()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such pipeline file") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the pipeline file ({exc.strerror})") from exc
    try:
        return yaml.load(content, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = "; quote references to steps, e.g. model: \"@train\"" if "'@'" in problem else ""
        raise PipelineError(f"{path}: not valid YAML ({where}{problem}){hint}") from exc


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(choices)


def _check_keys(raw: dict[Any, Any], schema: dict[str, Key], where: str, path: Path,
                extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Unknown, missing and mistyped keys → PipelineError; returns every key with defaults filled in."""
    valid = [*extra, *schema]
    for key in raw:
        if key not in valid:
            prefix = f"{where}." if where else ""
            shown = key if isinstance(key, str) else repr(key)
            raise PipelineError(f"{path}: {prefix}{shown}: unknown key; {_suggest(str(key), valid)}")
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        at = f"{where}.{key}" if where else key
        value = raw.get(key)
        if value is None:
            if spec.required:
                raise PipelineError(f"{path}: {where or 'top level'}: missing required key {key!r} "
                                    f"({spec.expected})")
            values[key] = spec.default
            continue
        try:
            values[key] = spec.check(value)
        except _Invalid:
            raise PipelineError(f"{path}: {at}: expected {spec.expected}, got {_show(value)}") from None
    return values


def load_pipeline(path: str | os.PathLike[str], *, workdir: str | os.PathLike[str] | None = None) -> Pipeline:
    """Read and validate a pipeline file.

    Args:
        path: the YAML file.
        workdir: overrides the file's ``workdir`` (relative to the current directory).

    Raises:
        PipelineError: one line naming the file, the key path and what is wrong.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: a pipeline file is a mapping with 'steps' (and 'name', 'workdir'), "
                            f"got {_show(raw)}")
    top = _check_keys(raw, TOP_LEVEL, "", path)
    raw_steps = top["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PipelineError(f"{path}: steps: expected {TOP_LEVEL['steps'].expected}, got {_show(raw_steps)}")
    name = top["name"] or re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    folder = path.expanduser().absolute().parent
    chosen = Path(workdir) if workdir is not None else Path(top["workdir"] or Path("runs") / name)
    pipeline_workdir = chosen.expanduser().absolute()

    kinds = [step.get("kind") if isinstance(step, dict) else None for step in raw_steps]
    steps: list[StepSpec] = []
    for index, raw_step in enumerate(raw_steps):
        where = f"steps[{index}]"
        if not isinstance(raw_step, dict):
            raise PipelineError(f"{path}: {where}: expected a mapping with a 'kind' (one of {', '.join(KINDS)}), "
                                f"got {_show(raw_step)}")
        kind = raw_step.get("kind")
        if kind is None:
            raise PipelineError(f"{path}: {where}: missing required key 'kind' (one of {', '.join(KINDS)})")
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PipelineError(f"{path}: {where}.kind: unknown step kind {_show(kind)}; {hint}"
                                f"(kinds: {', '.join(KINDS)})")
        values = _check_keys(raw_step, SCHEMAS[kind], where, path, extra=("kind", "name"))
        step_name = raw_step.get("name")
        if step_name is None:
            same = [i for i, k in enumerate(kinds) if k == kind]
            step_name = kind if len(same) == 1 else f"{kind}-{same.index(index) + 1}"
        else:
            try:
                step_name = identifier().check(step_name)
            except _Invalid:
                raise PipelineError(f"{path}: {where}.name: expected {identifier().expected}, "
                                    f"got {_show(step_name)}") from None
        if any(step.name == step_name for step in steps):
            if "name" in raw_step:
                raise PipelineError(f"{path}: {where}.name: {step_name!r} is already the name of an earlier step; "
                                    "give each step its own name")
            raise PipelineError(f"{path}: {where}: its default name {step_name!r} is already the name of an "
                                "earlier step; give one of them another 'name'")
        steps.append(StepSpec(index=index, name=step_name, kind=kind, values=values,
                              given=frozenset(k for k, v in raw_step.items() if v is not None)))

    pipeline = Pipeline(path=path, folder=folder, name=name, description=top["description"],
                        workdir=pipeline_workdir, steps=tuple(steps))
    for index, step in enumerate(steps):  # in order: a step's checks may look at earlier steps' references
        steps[index] = _link(dataclasses.replace(pipeline, steps=tuple(steps)), step)
    return dataclasses.replace(pipeline, steps=tuple(steps))


def _link(pipeline: Pipeline, step: StepSpec) -> StepSpec:
    """Check the step's cross-key and cross-step rules; resolve its references."""
    earlier = pipeline.steps[:step.index]
    outputs = _earlier_outputs(earlier)
    _check_own_outputs(pipeline, step, outputs)
    if step.kind == "train":
        _check_train(pipeline, step)
    refs = {key: _resolve_refs(pipeline, step, key, outputs) for key, spec in SCHEMAS[step.kind].items()
            if spec.role in ("input", "inputs") and step.values[key] is not None}
    values = step.values
    if step.kind == "batch" and values["exclude_trained"] and refs["model"][0] is None:
        raise pipeline.error(f"{step.where}.exclude_trained", "needs 'model' to be a train step's output "
                             "(@STEP), to know which scenes it trained on")
    if step.kind == "report":
        values = dict(values, summarise=_check_report(pipeline, step))
    return dataclasses.replace(step, values=values, refs=refs)


def _earlier_outputs(earlier: tuple[StepSpec, ...]) -> dict[str, Ref]:
    """Each earlier step's output as written → the reference it stands for."""
    outputs: dict[str, Ref] = {}
    for other in earlier:
        for key, spec in SCHEMAS[other.kind].items():
            if spec.role == "output" and other.values[key] is not None:
                outputs[other.values[key]] = Ref(other.name, key)
    return outputs


def _check_own_outputs(pipeline: Pipeline, step: StepSpec, outputs: dict[str, Ref]) -> None:
    values = step.values
    for key, spec in SCHEMAS[step.kind].items():
        if spec.role == "output" and values[key] is not None and values[key] in outputs:
            owner = outputs[values[key]].step
            raise pipeline.error(f"{step.where}.{key}", f"{values[key]!r} is already an output of step {owner!r}; "
                                 "give each output its own path")


def _check_train(pipeline: Pipeline, step: StepSpec) -> None:
    """scene xor scenes, seed xor seeds, sample with scenes, an inline config that loads."""
    where, values, given = step.where, step.values, step.given
    if "scene" in given and "scenes" in given:
        raise pipeline.error(where, "give either 'scene' or 'scenes', not both")
    if "scene" not in given and "scenes" not in given:
        raise pipeline.error(where, "missing required key 'scene' (or 'scenes': a list of paths or globs)")
    if "seed" in given and "seeds" in given:
        raise pipeline.error(where, "give either 'seed' or 'seeds', not both")
    if "sample" in given and "scenes" not in given:
        raise pipeline.error(f"{where}.sample", "needs 'scenes' (a list or glob to sample from)")
    if "epochs" in given and "steps" in given:  # each sets the length of the run
        raise pipeline.error(where, "give either 'epochs' or 'steps', not both")
    config = values["config"]
    if isinstance(config, dict):
        from hsi_cluster.config import load_config

        try:
            load_config(values["preset"], inline=config, epochs=values["epochs"], steps=values["steps"],
                        batch_size=values["batch_size"])
        except HsiClusterError as exc:
            raise pipeline.error(f"{where}.config", str(exc)) from None


def _resolve_refs(pipeline: Pipeline, step: StepSpec, key: str, outputs: dict[str, Ref]) -> list[Ref | None]:
    """Per item of input ``key``: the earlier output it refers to (``@STEP`` or written as that output), or None."""
    spec = SCHEMAS[step.kind][key]
    items = step.values[key] if spec.role == "inputs" else [step.values[key]]
    found: list[Ref | None] = []
    for position, item in enumerate(items):
        at = f"{step.where}.{key}" + (f"[{position}]" if spec.role == "inputs" and len(items) > 1 else "")
        ref = _named_ref(pipeline, step, item, at) if item.startswith("@") else outputs.get(item)
        if ref is not None:
            producer = pipeline.step(ref.step)
            allowed = PRODUCERS.get(key, ())
            if producer.kind not in allowed or ref.key != "output":
                wanted = f"the output of a {' or '.join(allowed)} step" if allowed else "a file, not a step's output"
                raise pipeline.error(at, f"{item!r} is the {ref.key} of {producer.kind} step {producer.name!r}; "
                                     f"{key} must be {wanted}")
        found.append(ref)
    return found


def _named_ref(pipeline: Pipeline, step: StepSpec, item: str, at: str) -> Ref:
    """The reference ``@STEP`` stands for; STEP must come before ``step``."""
    target = item[1:]
    names = [other.name for other in pipeline.steps[:step.index]]
    if target not in names:
        later = [s.name for s in pipeline.steps[step.index:]]
        if target in later:
            raise pipeline.error(at, f"{item!r} names a step that does not come before this one; "
                                 "steps run in file order")
        close = difflib.get_close_matches(target, names, n=1, cutoff=0.5)
        hint = f"did you mean '@{close[0]}'?" if close else f"earlier steps: {', '.join(names) or 'none'}"
        raise pipeline.error(at, f"{item!r} names no earlier step; {hint}")
    return Ref(target)


def _check_report(pipeline: Pipeline, step: StepSpec) -> list[str]:
    """The steps a report summarises (default: every earlier evaluate and batch step), checked."""
    where, values = step.where, step.values
    earlier = pipeline.steps[:step.index]
    names = [other.name for other in earlier]
    summarise = values["summarise"]
    if summarise is None:
        summarise = [s.name for s in earlier if s.kind in ("evaluate", "batch")]
    for name in summarise:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"earlier steps: {', '.join(names) or 'none'}"
            raise pipeline.error(f"{where}.summarise", f"{name!r} names no earlier step; {hint}")
        if pipeline.step(name).kind not in ("evaluate", "batch"):
            raise pipeline.error(f"{where}.summarise", f"{name!r} is a {pipeline.step(name).kind} step; "
                                 "a report summarises evaluate and batch steps")
    if values["kmeans"]:
        if not any(pipeline.step(name).kind == "evaluate" for name in summarise):  # it did nothing, in silence
            raise pipeline.error(f"{where}.kmeans", "the k-means baseline is scored beside the report's evaluate "
                                 "steps, and it summarises none; add an evaluate step before it, or drop kmeans")
        for name in summarise:
            other = pipeline.step(name)
            if other.kind == "evaluate" and other.refs["labels"][0] is None:
                raise pipeline.error(f"{where}.kmeans", f"the k-means baseline needs the labels of evaluate "
                                     f"step {name!r} to come from a predict step (@STEP), to know the scene")
    return list(summarise)
