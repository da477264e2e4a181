"""Training configuration: presets, YAML overrides and validation."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hsi_cluster.data.augment import AugmentConfig
from hsi_cluster.errors import HsiClusterError, first_line, naming_python_options, option
from hsi_cluster.geo import PatchGeometry
from hsi_cluster.model.backbones import DEFAULT_DEPTH, DenseBackbone, ResNetBackbone, backbone_geometry

#: The values of ``centroid_features``: choose the stages per run, every stage joined, the last stage alone.
CENTROID_FEATURES = ("auto", "scales", "last")
#: The values of ``projection``: principal components, or minimum-noise-fraction components.
PROJECTIONS = ("pca", "mnf")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides a training run (with the scene, K and the seed).

    Attributes:
        backbone: "dense" (valid convolutions, fast tiled inference) or "resnet" (the paper's).
        backbone_kwargs: backbone sizes, e.g. ``{"width": 64, "depth": 5}``.
        patch_size: patch side p; must equal the dense backbone's receptive field (2·depth + 1).
        n_components: PCA components C after band standardisation: a count (int ≥ 1), or the fraction
            of the standardised variance to keep (float in (0, 1); C is then the fewest components
            that reach it, fitted per training run and recorded in the checkpoint).
        projection: the components the network reads: "pca" (principal components of the
            standardised bands, sorted by variance; both presets) or "mnf" (minimum noise fraction,
            ENVI's MNF: sorted by signal-to-noise ratio, the noise estimated from each sampled pixel's
            closer neighbour along each axis; as many components as the PCA rule gives, sought within
            four times as many leading principal axes).
        head_hidden: hidden width of the cluster head.
        instance_dim: size of an instance projector for the NT-Xent term, or None to apply NT-Xent
            to the cluster probabilities (the paper).
        restarts: networks trained per run (seeds ``seed + 1000 r``); the one whose labels agree most
            with the others' is kept (see :mod:`hsi_cluster.model.choose_restart`). 1: one network.
        batch_size: patches per step.
        samples: the training length as a sample budget: patches drawn in all (whole batches of
            ``batch_size``, rounded down), or None to train for ``epochs`` passes. With a budget,
            ``epochs`` (if set) caps it at that many passes over the valid pixels, so a small scene
            is not trained for hundreds of passes: the ``fast`` preset's 640 000 samples with a cap
            of 30 epochs train Indian Pines (21 k pixels) and Salinas-A (7 k) for 30 passes, as
            before the budget existed, and any scene past ~21 k pixels for 1 250 steps whatever its
            size. A budget shorter than one pass draws the same share of every block's pixels.
            A mapping that sets one of ``samples`` and ``epochs`` but not the other sets the other
            to None (``epochs: 10`` means ten passes; ``samples: N`` means N samples, uncapped).
        epochs: passes over all valid pixels (the cap of a budget; ignored when ``steps`` is set).
        steps: total optimiser steps (overrides ``samples`` and ``epochs``), or None.
        lr, weight_decay: Adam parameters.
        lr_step_fraction, lr_gamma: the learning-rate schedule, defined on the fraction of the run
            done: the lr is multiplied by gamma each time another ``lr_step_fraction`` of the run's
            steps is done (2/3: one step, after two thirds of the run; 0.1: nine steps, at 10 %,
            20 %, … 90 %).
        instance_weight, cluster_weight: weights of NT-Xent and Barlow-Twins terms.
        entropy_weight: weight of the cluster-balance regulariser (0: off, as in the paper).
        temperature, offdiag_weight: loss hyperparameters.
        augment: the augmentation pool's parameters (see :class:`AugmentConfig`).
        self_label_epochs: epochs of self-labelling after the contrastive epochs (0: off, as in the
            paper): confident predictions on clean patches supervise augmented views.
        self_label_threshold: minimum cluster probability for a pseudo-label.
        assignment: how the trained model labels pixels: "centroids" (k-means on the trained
            backbone's features of ``centroid_samples`` training pixels, fitted once after training;
            a pixel takes its nearest centroid) or "head" (argmax of the cluster head, the paper).
        centroid_features: which features the centroids read: "scales" (the dense backbone's every
            stage joined, receptive fields 1, 3, 5, … pixels, each block weighing the same: the pixel's
            own spectrum stays decisive where its neighbours differ, and the context still counts
            where parcels are large), "last" (the last stage only, the whole receptive field) or
            "auto" (k-means on every stage, on every stage but the 1 × 1 stem, and on the last; the
            partition with the highest silhouette is kept: see :mod:`hsi_cluster.model.choose_scales`).
        centroid_samples: training pixels whose features fit the centroids.
        pca_samples: pixels sampled to fit the PCA.
        workers: DataLoader worker processes (0: in the main process).
        amp: bf16 mixed precision on CUDA.
    """

    backbone: str = "dense"
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 64, "depth": 2})
    patch_size: int = 5
    n_components: int | float = 0.99
    projection: str = "pca"
    head_hidden: int = 512
    instance_dim: int | None = None
    batch_size: int = 512
    restarts: int = 1
    samples: int | None = 640_000
    epochs: int | None = 30
    steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 5e-4
    lr_step_fraction: float = 2 / 3
    lr_gamma: float = 0.1
    instance_weight: float = 5e-5
    cluster_weight: float = 1.0
    entropy_weight: float = 0.1
    temperature: float = 0.5
    offdiag_weight: float = 0.005
    augment: AugmentConfig = field(default_factory=AugmentConfig.mild)
    self_label_epochs: int = 0
    self_label_threshold: float = 0.99
    assignment: str = "centroids"
    centroid_features: str = "auto"
    centroid_samples: int = 20_000
    pca_samples: int = 100_000
    workers: int = 0
    amp: bool = True

    def patch_geometry(self) -> PatchGeometry:
        """The patch, halo and receptive field of this configuration: the one place where ``patch_size``
        and the dense backbone's ``backbone_kwargs.depth`` (which decides them) are reconciled.

        Raises:
            HsiClusterError: ``patch_size`` is not a positive odd number, or disagrees with the depth.
        """
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise HsiClusterError(f"patch_size must be a positive odd number, got {self.patch_size}")
        if self.backbone == "dense":
            depth = self.backbone_kwargs.get("depth", DEFAULT_DEPTH)
            if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
                raise HsiClusterError(f"backbone_kwargs depth must be a positive integer, got {depth!r}")
        fixed = backbone_geometry(self.backbone, self.backbone_kwargs)
        if fixed is not None and fixed.patch_size != self.patch_size:
            side = fixed.patch_size
            raise HsiClusterError(f"the dense backbone of depth {self.backbone_kwargs.get('depth', DEFAULT_DEPTH)} "
                                  f"sees {side}×{side} patches but patch_size is {self.patch_size}; "
                                  "set depth = (patch_size − 1) / 2")
        return PatchGeometry(self.patch_size)

    @property
    def centroids_read_scales(self) -> bool:
        """The centroid sample holds every stage's features ("auto" and "scales"), not the last stage's alone."""
        return self.centroid_features != "last"

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready mapping (the inverse of :func:`config_from_dict`)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["augment"] = self.augment.to_dict()
        values["backbone_kwargs"] = dict(self.backbone_kwargs)
        return values


PRESETS: dict[str, dict[str, Any]] = {
    # The exact recipe of the paper and its reference code.
    "paper": {
        "self_label_epochs": 0, "n_components": 8,
        "backbone": "resnet", "backbone_kwargs": {}, "patch_size": 11, "batch_size": 512, "epochs": 200,
        "samples": None, "lr": 2e-4, "weight_decay": 5e-3, "lr_step_fraction": 0.1, "lr_gamma": 0.1,
        "entropy_weight": 0.0, "augment": AugmentConfig().to_dict(), "assignment": "head",
        "centroid_features": "last", "projection": "pca",
    },
    # CPU default (the TrainConfig defaults): dense (valid-convolution) backbone, milder augmentation,
    # a budget of 640 000 samples capped at 30 passes (1 250 steps of 512 past ~21 k valid pixels),
    # Adam 1e-3 with a ×0.1 step after 2/3 of the run (20 of 30 epochs where the cap binds), a light cluster-balance term (weight 0.1:
    # at 1.0 it pushes towards equal cluster sizes and split Salinas-A's largest field in one seed of three),
    # and as many PCA components as keep 99 % of the standardised variance (Salinas-A 8, Indian Pines 40).
    # (projection: mnf lifted the noisy and coarse development scenes by 0.03-0.20 ACC but cost the Salinas-A
    # family 0.05-0.10, and with column stripes the network on it stays below PCA: see docs/accuracy.md.)
    # A 5 × 5 context (two valid 3 × 3 layers after the 1 × 1 stem): 11 × 11 blurred fine parcels and thin
    # features (Jasper Ridge ACC 0.75 against per-pixel k-means' 0.89, fine-parcel scenes 0.31 against 0.61);
    # labels are the nearest k-means centroid of the trained features of every scale (1 × 1, 3 × 3, 5 × 5)
    # joined with equal weight: on the last stage alone, fine parcels and Jasper Ridge stayed below
    # per-pixel k-means (see docs/accuracy.md).
    "fast": {},
}


def _check_known(values: dict[str, Any], names: list[str], what: str) -> None:
    """One line naming the unknown keys of ``values``, each with the closest valid name when there is one."""
    unknown = sorted(set(values) - set(names))
    if not unknown:
        return
    close = {key: difflib.get_close_matches(str(key), names, n=1, cutoff=0.6) for key in unknown}
    hints = "; ".join(f"did you mean {match[0]!r} for {key!r}?" for key, match in close.items() if match)
    raise HsiClusterError(f"unknown {what} {unknown}; {hints + ' ' if hints else ''}valid: {sorted(names)}")


def _augment_from(values: dict[str, Any] | AugmentConfig) -> AugmentConfig:
    if isinstance(values, AugmentConfig):
        return values
    _check_known(values, [f.name for f in dataclasses.fields(AugmentConfig)], "augment option(s)")
    converted: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return AugmentConfig(**converted)
    except (TypeError, ValueError) as exc:
        raise HsiClusterError(f"bad augment option: {exc}") from exc


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays (from a notebook: ``lr=np.float64(1e-3)``, a ``np.linspace`` sweep) as plain Python
    values, in mappings and lists too: the checkpoint holds plain data only, and loads without running code."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def config_from_dict(values: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``values`` on top of ``base`` (default: the dataclass defaults), validating keys."""
    base = base or TrainConfig()
    values = _plain(values)
    _check_known(values, [f.name for f in dataclasses.fields(TrainConfig)], "config key(s)")
    updates = _coerce_fields({k: v for k, v in values.items() if k != "augment"})
    # The run's length: a mapping that sets passes or a budget, not both, means that one alone.
    if "epochs" in updates and "samples" not in updates:
        updates["samples"] = None
    elif "samples" in updates and "epochs" not in updates:
        updates["epochs"] = None
    if updates.get("backbone", base.backbone) != base.backbone and "backbone_kwargs" not in updates:
        updates["backbone_kwargs"] = {}  # the other backbone's sizes do not carry over: use its defaults
    if updates.get("backbone", base.backbone) != "dense" and "centroid_features" not in updates:
        updates["centroid_features"] = "last"  # only the dense backbone has stages of known receptive field
    if "augment" in values:
        updates["augment"] = values["augment"]
        current = base.augment.to_dict()
        extra = updates["augment"].to_dict() if isinstance(updates["augment"], AugmentConfig) else updates["augment"]
        if not isinstance(extra, dict):
            raise HsiClusterError("config key 'augment' must be a mapping of augmentation options")
        updates["augment"] = _augment_from({**current, **extra})
    try:
        config = dataclasses.replace(base, **updates)
    except TypeError as exc:
        raise HsiClusterError(f"bad config: {exc}") from exc
    validate_config(config)
    return config


def preset_config(name: str) -> TrainConfig:
    """The named preset ("fast" or "paper")."""
    if name not in PRESETS:
        raise HsiClusterError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return config_from_dict(PRESETS[name])


def load_config(preset: str, path: str | Path | None = None, *, inline: dict[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """A preset, then a YAML file's keys, then ``inline`` keys (a pipeline's ``config:`` mapping), then
    explicit overrides (None values ignored)."""
    config = preset_config(preset)
    _check_one_length(overrides, lambda key: option(f"--{key}"))
    _check_one_length(inline or {}, lambda key: key if naming_python_options() else f"'{key}'")
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise HsiClusterError(f"{path}: cannot read the config file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise HsiClusterError(f"{path}: not a text file, so not a YAML config; pass the YAML file of training "
                                  "options") from exc
        except yaml.YAMLError as exc:
            raise HsiClusterError(f"{path}: not valid YAML ({first_line(exc)})") from exc
        if not isinstance(values, dict):
            raise HsiClusterError(f"{path}: a config file must be a mapping of keys to values")
        config = config_from_dict(values, base=config)
    if inline:
        config = config_from_dict(_length_replaced(inline), base=config)
    return config_from_dict(_length_replaced({k: v for k, v in overrides.items() if v is not None}), base=config)


def _check_one_length(values: dict[str, Any], named: Callable[[str], str]) -> None:
    """One layer of options (the command's flags, the Python call's keywords, a pipeline's config mapping; each
    ``named`` as its caller writes it) sets the run's length once: two of ``samples``, ``epochs`` and ``steps``
    would leave one ignored."""
    given = [named(key) for key in ("samples", "epochs", "steps") if values.get(key) is not None]
    if len(given) > 1:
        raise HsiClusterError(f"{' and '.join(given)} each set the length of the run; pass only one")


def _length_replaced(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` that set ``epochs`` or ``samples`` replace an earlier layer's ``steps`` too (which would override
    them: a file's ``steps: 10`` beat ``--epochs 1`` in silence)."""
    if ("epochs" in values or "samples" in values) and "steps" not in values:
        return {**values, "steps": None}
    return values


def _coerce_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Check each value against its :class:`TrainConfig` field type, converting where YAML is
    lenient: ``1e-3`` (a string to YAML 1.1) and integers become floats, integral floats become ints."""
    hints = typing.get_type_hints(TrainConfig)
    converted: dict[str, Any] = {}
    for name, value in values.items():
        kind = hints[name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if args and optional else kind
        if set(args) == {int, float}:  # a count or a fraction (n_components)
            if isinstance(value, float) and value == 1.0:  # "all the variance" trained one component, in silence
                raise HsiClusterError(f"{name} 1.0 is ambiguous: a fraction of the variance lies below 1 (0.999 keeps "
                                      "nearly all of it), and one component is written 1")
            if isinstance(value, float) and value.is_integer() and value >= 1:
                value = int(value)
            base = int if isinstance(value, int) else float
        base = typing.get_origin(base) or base
        if value is None and optional:
            converted[name] = None
            continue
        if base is float and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if base is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, base) or (base in (int, float) and isinstance(value, bool)):
            expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                        dict: "a mapping"}[base] + (" or null" if optional else "")
            raise HsiClusterError(f"config key {name!r} must be {expected}, got {value!r}")
        if base is float and not math.isfinite(value):  # YAML's .nan and .inf pass as floats
            raise HsiClusterError(f"config key {name!r} must be a finite number, got {value!r}")
        converted[name] = value
    return converted


def _check_assignment(config: TrainConfig) -> None:
    """How the trained model labels pixels: a known assignment and enough pixels for its centroids."""
    if config.assignment not in ("centroids", "head"):
        raise HsiClusterError(f"assignment must be 'centroids' or 'head', got {config.assignment!r}")
    if config.projection not in PROJECTIONS:
        raise HsiClusterError(f"projection must be one of {', '.join(map(repr, PROJECTIONS))}, got {config.projection!r}")
    if config.centroid_features not in CENTROID_FEATURES:
        raise HsiClusterError(f"centroid_features must be one of {', '.join(map(repr, CENTROID_FEATURES))}, got "
                              f"{config.centroid_features!r}")
    if config.assignment == "centroids" and config.centroid_features != "last" and config.backbone != "dense":
        raise HsiClusterError(f"centroid_features {config.centroid_features!r} needs the dense backbone, not "
                              f"{config.backbone!r}: set centroid_features: last")
    if config.centroid_samples < 100:
        raise HsiClusterError(f"centroid_samples must be at least 100 pixels, got {config.centroid_samples}")


def _check_backbone(config: TrainConfig) -> None:
    """A known backbone, and ``backbone_kwargs`` it takes, whose sizes (a count or a list of counts) are ≥ 1."""
    if config.backbone not in ("dense", "resnet"):
        raise HsiClusterError(f"backbone must be 'dense' or 'resnet', got {config.backbone!r}")
    backbone_class = DenseBackbone if config.backbone == "dense" else ResNetBackbone
    accepted = set(inspect.signature(backbone_class).parameters) - {"in_channels"}
    unknown = set(config.backbone_kwargs) - accepted
    if unknown:
        raise HsiClusterError(f"unknown backbone_kwargs {sorted(unknown)} for the {config.backbone} backbone; "
                              f"valid: {sorted(accepted)}")
    for key, value in config.backbone_kwargs.items():
        counts = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in counts):
            raise HsiClusterError(f"backbone_kwargs {key} must be at least 1, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Raise a one-line :class:`HsiClusterError` for inconsistent settings."""
    _check_backbone(config)
    config.patch_geometry()
    if not (0 < config.n_components < 1 if isinstance(config.n_components, float) else config.n_components >= 1):
        raise HsiClusterError(f"n_components must be a count ≥ 1 or a variance fraction in (0, 1), "
                              f"got {config.n_components}")
    minimum = {"batch_size": 2, "epochs": 1, "head_hidden": 1, "samples": 1, "restarts": 1,
               "pca_samples": 1, "steps": 1, "instance_dim": 1, "self_label_epochs": 0, "workers": 0}
    for name, least in minimum.items():
        value = getattr(config, name)
        if value is not None and value < least:
            raise HsiClusterError(f"{name} must be ≥ {least}, got {value}")
    if config.steps is None and config.samples is None and config.epochs is None:
        raise HsiClusterError("the length of the run is not set: set samples, epochs or steps")
    if config.steps is None and config.samples is not None and config.samples < config.batch_size:
        raise HsiClusterError(f"a budget of {config.samples} samples is less than one batch of {config.batch_size}; "
                              "pass a larger --samples or a smaller --batch-size")
    if not 0 < config.lr_step_fraction <= 1:
        raise HsiClusterError(f"lr_step_fraction must be in (0, 1], got {config.lr_step_fraction}")
    for name in ("lr", "lr_gamma", "temperature"):
        if getattr(config, name) <= 0:
            raise HsiClusterError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("weight_decay", "instance_weight", "cluster_weight", "entropy_weight", "offdiag_weight"):
        if getattr(config, name) < 0:
            raise HsiClusterError(f"{name} must be ≥ 0, got {getattr(config, name)}")
    _check_assignment(config)
    if not 0 <= config.self_label_threshold <= 1:
        raise HsiClusterError(f"self_label_threshold must be in [0, 1], got {config.self_label_threshold}")
