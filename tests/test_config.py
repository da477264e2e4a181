"""Training configuration: presets, YAML overrides, validation with one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from hsi_cluster.config import PRESETS, TrainConfig, config_from_dict, load_config, preset_config
from hsi_cluster.data.augment import AugmentConfig
from hsi_cluster.errors import HsiClusterError


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.mark.parametrize("name", ["fast", "paper"])
def test_presets_load(name: str) -> None:
    config = preset_config(name)
    assert isinstance(config, TrainConfig)
    assert load_config(name) == config
    assert set(PRESETS) == {"fast", "paper"}


def test_paper_preset_has_the_paper_recipe() -> None:
    config = preset_config("paper")
    assert config.backbone == "resnet"
    assert config.lr == 2e-4 and config.weight_decay == 5e-3
    # StepLR ×0.1 every 20 of 200 epochs: every 10 % of the run
    assert config.lr_step_fraction == 0.1 and config.lr_gamma == 0.1
    assert config.epochs == 200 and config.steps is None and config.samples is None
    assert config.batch_size == 512 and config.patch_size == 11 and config.n_components == 8
    assert config.instance_weight == 5e-5 and config.cluster_weight == 1.0
    assert config.temperature == 0.5 and config.offdiag_weight == 0.005
    assert config.entropy_weight == 0.0 and config.instance_dim is None
    assert config.head_hidden == 512
    augment = config.augment
    assert augment == AugmentConfig()  # the paper's pool
    assert augment.crop_scale == (0.08, 1.0) and augment.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert augment.hflip_prob == 0.5 and augment.blur_prob == 0.5 and augment.blur_sigma == (0.1, 2.0)
    assert augment.pixel_mask_prob == 0.5 and augment.band_mask_prob == 0.5
    assert augment.blur_kernel_size == 3


def test_fast_preset_is_a_consistent_dense_network() -> None:
    config = preset_config("fast")
    assert config.backbone == "dense"
    assert config.patch_size == 2 * int(config.backbone_kwargs["depth"]) + 1
    assert config.n_components == 0.99  # as many components as keep 99 % of the variance


@pytest.mark.parametrize("value, expected", [(16, 16), (16.0, 16), (0.95, 0.95), ("0.9", 0.9), (1, 1)])
def test_n_components_is_a_count_or_a_variance_fraction(value, expected) -> None:
    config = config_from_dict({"n_components": value})
    assert config.n_components == expected and type(config.n_components) is type(expected)


@pytest.mark.parametrize("value", [0, 0.0, 1.5, -0.2, "many"])
def test_bad_n_components(value) -> None:
    with pytest.raises(HsiClusterError, match="n_components") as exc:
        config_from_dict({"n_components": value})
    one_line(exc)


def test_n_components_of_one_point_zero_is_refused_as_ambiguous() -> None:
    """``n_components: 1.0`` ("all the variance") trained a one-component model, in silence."""
    with pytest.raises(HsiClusterError, match=r"n_components 1.0 is ambiguous: a fraction of the variance lies below 1"):
        config_from_dict({"n_components": 1.0})


def test_unknown_preset() -> None:
    with pytest.raises(HsiClusterError, match="slow") as exc:
        preset_config("slow")
    one_line(exc)


def test_yaml_file_overrides_the_preset_and_explicit_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"epochs": 3, "lr": 0.01, "batch_size": 64, "patch_size": 7,
                                    "backbone_kwargs": {"width": 16, "depth": 3}, "entropy_weight": 0.5}))
    config = load_config("fast", path)
    assert (config.epochs, config.lr, config.batch_size, config.patch_size) == (3, 0.01, 64, 7)
    assert config.backbone_kwargs == {"width": 16, "depth": 3} and config.entropy_weight == 0.5
    base = preset_config("fast")
    assert config.weight_decay == base.weight_decay and config.augment == base.augment  # untouched keys
    overridden = load_config("fast", path, epochs=9, steps=None, batch_size=None)
    assert overridden.epochs == 9 and overridden.batch_size == 64 and overridden.steps is None
    with pytest.raises(HsiClusterError, match="width") as exc:  # dense sizes on the paper's resnet
        load_config("paper", path)
    one_line(exc)
    path.write_text(yaml.safe_dump({"epochs": 3, "lr": 0.01, "patch_size": 7}))
    on_paper = load_config("paper", path, batch_size=128)
    assert on_paper.backbone == "resnet" and on_paper.lr == 0.01 and on_paper.batch_size == 128


def test_empty_yaml_file_is_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config("paper", path) == preset_config("paper")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError, match="learning_rate") as exc:
        config_from_dict({"learning_rate": 0.1})
    one_line(exc)
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nbatchsize: 16\n")
    with pytest.raises(HsiClusterError, match="did you mean 'batch_size' for 'batchsize'") as exc:
        load_config("fast", path)
    one_line(exc)
    with pytest.raises(HsiClusterError, match="unknown augment option.*did you mean 'blur_prob' for 'blurprob'"):
        config_from_dict({"augment": {"blurprob": 0.5}})


@pytest.mark.parametrize("text, words", [("epochs: [1\n", "YAML"), ("- 1\n- 2\n", "mapping")])
def test_bad_yaml_file(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HsiClusterError, match=words) as exc:
        load_config("fast", path)
    assert "bad.yaml" in one_line(exc)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError, match="missing.yaml") as exc:
        load_config("fast", tmp_path / "missing.yaml")
    one_line(exc)


@pytest.mark.parametrize("values", [
    {"backbone_kwargs": {"width": 8, "depth": 2}, "patch_size": 7},
    {"backbone_kwargs": {"width": 8, "depth": 5}, "patch_size": 5},
    {"patch_size": 9},  # fast preset depth 5 sees 11
])
def test_dense_depth_patch_mismatch(values: dict) -> None:
    with pytest.raises(HsiClusterError, match="patch") as exc:
        config_from_dict(values, base=preset_config("fast"))
    one_line(exc)


def test_resnet_takes_any_odd_patch() -> None:
    assert config_from_dict({"patch_size": 7}, base=preset_config("paper")).patch_size == 7


def test_switching_backbone_drops_the_other_backbones_sizes() -> None:
    on_fast = config_from_dict({"backbone": "resnet"}, base=preset_config("fast"))
    assert on_fast.backbone == "resnet" and on_fast.backbone_kwargs == {}
    on_paper = config_from_dict({"backbone": "dense"}, base=preset_config("paper"))
    assert on_paper.backbone == "dense" and on_paper.backbone_kwargs == {} and on_paper.patch_size == 11
    sized = config_from_dict({"backbone": "resnet", "backbone_kwargs": {"widths": [16]}}, base=preset_config("fast"))
    assert sized.backbone_kwargs == {"widths": [16]}


@pytest.mark.parametrize("values", [{"patch_size": 4, "backbone": "resnet"}, {"backbone": "vit"},
                                    {"batch_size": 1}, {"epochs": 0}, {"n_components": 0}, {"steps": 0},
                                    {"lr": 0.0}, {"head_hidden": 0}, {"weight_decay": -1e-4}, {"lr_gamma": 0},
                                    {"lr_step_fraction": 0}, {"lr_step_fraction": 1.5}, {"samples": 0},
                                    {"samples": 100}, {"temperature": 0}, {"entropy_weight": -0.1},
                                    {"instance_weight": -1}, {"offdiag_weight": -0.005}, {"workers": -1},
                                    {"self_label_threshold": 1.5}, {"self_label_epochs": -2}, {"instance_dim": 0},
                                    {"pca_samples": 0}, {"projection": "ica"}])
def test_invalid_values(values: dict) -> None:
    with pytest.raises(HsiClusterError, match=next(iter(values))) as exc:
        config_from_dict(values)
    one_line(exc)


@pytest.mark.parametrize("values, word", [
    ({"lr": "fast"}, "number"), ({"epochs": "ten"}, "integer"), ({"batch_size": 2.5}, "integer"),
    ({"epochs": True}, "integer"), ({"lr": True}, "number"), ({"amp": "yes"}, "true or false"),
    ({"instance_dim": "x"}, "integer or null"), ({"backbone_kwargs": [64, 5]}, "mapping"),
    ({"backbone_kwargs": {"widht": 32, "depth": 5}}, "widht"), ({"backbone_kwargs": {"depth": 2.5}}, "depth"),
    ({"backbone": "resnet", "backbone_kwargs": {"width": 64}}, "width"),
])
def test_wrongly_typed_values_are_named(values: dict, word: str) -> None:
    with pytest.raises(HsiClusterError, match=word) as exc:
        config_from_dict(values)
    one_line(exc)


@pytest.mark.parametrize("text, words", [
    ("temperature: .nan\n", "config key 'temperature' must be a finite number, got nan"),
    ("lr: .inf\n", "config key 'lr' must be a finite number, got inf"),
    ("entropy_weight: .nan\n", "config key 'entropy_weight' must be a finite number, got nan"),
    ("weight_decay: -.inf\n", "config key 'weight_decay' must be a finite number, got -inf"),
    ("backbone_kwargs: {width: 0, depth: 2}\n", "backbone_kwargs width must be at least 1, got 0"),
    ("backbone: resnet\nbackbone_kwargs: {widths: [8, -3]}\n", r"backbone_kwargs widths must be at least 1, got \[8, -3\]"),
])
def test_values_no_run_could_use_are_refused_before_any_work(tmp_path: Path, text: str, words: str) -> None:
    """YAML's .nan and .inf, and sizes under 1: a one-line error naming the key (they were 'unexpected' errors,
    some after the ingest, or a NaN weight stored in the checkpoint)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(HsiClusterError, match=words) as exc:
        load_config("fast", path)
    one_line(exc)


def test_a_binary_file_as_config_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(HsiClusterError, match="scene.tif: not a text file, so not a YAML config") as exc:
        load_config("fast", path)
    one_line(exc)


def test_yaml_numbers_are_read_as_a_user_means_them(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` as a string and ``2`` as an int: a float key still gets a float."""
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 0\nepochs: 12.0\nsteps: null\n")
    config = load_config("fast", path)
    assert config.lr == 0.001 and isinstance(config.lr, float)
    assert config.weight_decay == 0.0 and isinstance(config.weight_decay, float)
    assert config.epochs == 12 and isinstance(config.epochs, int) and config.steps is None


def test_nested_augment_override_keeps_the_other_options(tmp_path: Path) -> None:
    base = preset_config("fast")
    config = config_from_dict({"augment": {"pixel_mask_prob": 0.3, "crop_scale": [0.6, 0.9]}}, base=base)
    assert config.augment.pixel_mask_prob == 0.3
    assert config.augment.crop_scale == (0.6, 0.9)  # a YAML list becomes a tuple
    expected = dataclasses.replace(base.augment, pixel_mask_prob=0.3, crop_scale=(0.6, 0.9))
    assert config.augment == expected
    assert base.augment.pixel_mask_prob == 0.2  # the base is not mutated (the fast preset's mild pool)
    path = tmp_path / "aug.yaml"
    path.write_text("augment:\n  band_mask_prob: 0.1\n  vflip_prob: 0.5\n")
    from_file = load_config("paper", path)
    assert from_file.augment == dataclasses.replace(AugmentConfig(), band_mask_prob=0.1, vflip_prob=0.5)


@pytest.mark.parametrize("augment, word", [({"pixel_mask": 0.3}, "pixel_mask"), ({"hflip_prob": 2.0}, "hflip_prob"),
                                           ("strong", "mapping")])
def test_bad_augment_override(augment, word: str) -> None:
    with pytest.raises(HsiClusterError, match=word) as exc:
        config_from_dict({"augment": augment})
    one_line(exc)


@pytest.mark.parametrize("name", ["fast", "paper"])
def test_to_dict_round_trips_and_is_yaml_ready(name: str, tmp_path: Path) -> None:
    config = config_from_dict({"augment": {"blur_prob": 0.25}}, base=preset_config(name))
    values = config.to_dict()
    assert config_from_dict(values) == config
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(values))  # plain types only
    assert load_config("fast", path) == config


def test_centroid_features_default_to_a_choice_of_scales_and_follow_the_backbone():
    assert preset_config("fast").centroid_features == "auto"
    assert preset_config("fast").centroids_read_scales
    assert config_from_dict({"centroid_features": "scales"}).centroids_read_scales
    assert not config_from_dict({"centroid_features": "last"}).centroids_read_scales
    assert preset_config("paper").centroid_features == "last"
    # The ResNet has no stages of known receptive field: switching to it reads the last stage.
    assert config_from_dict({"backbone": "resnet"}, base=preset_config("fast")).centroid_features == "last"
    with pytest.raises(HsiClusterError, match="centroid_features must be"):
        config_from_dict({"centroid_features": "all"})
    with pytest.raises(HsiClusterError, match="needs the dense backbone"):
        config_from_dict({"backbone": "resnet", "patch_size": 11, "centroid_features": "scales"})
    with pytest.raises(HsiClusterError, match="'auto' needs the dense backbone"):
        config_from_dict({"backbone": "resnet", "patch_size": 11, "centroid_features": "auto"})


def test_a_length_given_explicitly_replaces_the_config_files_steps(tmp_path) -> None:
    """A file's ``steps: 10`` beat ``--epochs 1`` (or ``--samples``) in silence: it trained 10 steps."""
    cfg = tmp_path / "steps10.yaml"
    cfg.write_text("steps: 10\nlr: 0.002\n")
    by_epochs = load_config("fast", cfg, epochs=1)
    assert (by_epochs.steps, by_epochs.epochs, by_epochs.samples, by_epochs.lr) == (None, 1, None, 0.002)
    by_samples = load_config("fast", cfg, samples=2048)
    assert (by_samples.steps, by_samples.samples) == (None, 2048)
    assert load_config("fast", cfg).steps == 10 and load_config("fast", cfg, steps=5).steps == 5
    assert load_config("fast", cfg, inline={"epochs": 2}).steps is None  # hc.train(..., config=cfg, epochs=2)
