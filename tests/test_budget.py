"""Training length as a sample budget: steps from the budget, the epochs cap, the explicit overrides, the
learning-rate schedule on the fraction of the run, a budget shorter than one pass, resume and the CLI.

Tiny scenes and networks as in tests/test_train.py (batches of 32, a few steps per run).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from hsi_cluster.checkpoint import CheckpointError, save_checkpoint
from hsi_cluster.cli import main
from hsi_cluster.config import config_from_dict, load_config, preset_config
from hsi_cluster.data.sampler import PatchSampler
from hsi_cluster.errors import HsiClusterError
from hsi_cluster.io.store import Store
from hsi_cluster.train import lr_at, lr_drop_interval, partial_checkpoint_path, run_length, train
from tests.train_helpers import (
    TINY,
    IngestedScene,
    make_scene,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 32


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HSICLUSTER_WORK", str(tmp_path / "default-work"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """24 × 20 × 12 with holes (473 valid pixels: 14 batches of 32 per pass), 16-pixel chunks."""
    return make_scene(tmp_path_factory.mktemp("scene"), height=24, width=20, structured=True, seed=1,
                      nan_pixels=4, nodata_pixels=3)


@pytest.fixture(scope="module")
def blocky(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """64 × 56 in 16-pixel chunks (4 × 4 blocks, the last column 8 wide) with a nodata corner, so the
    blocks have very different valid-pixel counts (one has none)."""
    cube = np.random.default_rng(3).normal(500, 40, (6, 64, 56)).astype(np.float32)
    cube[:, :16, :16] = -9999.0  # block (0, 0): no valid pixel
    cube[:, 16:28, :10] = np.nan  # block (1, 0): partly valid
    return make_scene(tmp_path_factory.mktemp("blocky"), bands=6, height=64, width=56, cube=cube)


def budget_config(**overrides):
    """A budget of ``samples`` with no epochs cap unless given: tiny network, batches of 32."""
    return config_from_dict({**{k: v for k, v in TINY.items() if k != "epochs"}, **overrides},
                            base=preset_config("fast"))


def run(scene: IngestedScene, output: Path, config, **kwargs):
    kwargs = {"n_clusters": 3, "seed": 0, "device": "cpu", "work_dir": output.parent / "work", **kwargs}
    return train([scene.store], output=output, config=config, **kwargs)


# ------------------------------------------------------------------------ steps from the budget


def test_fast_preset_trains_the_development_scenes_as_before_and_large_scenes_for_the_budget() -> None:
    fast = preset_config("fast")
    assert (fast.samples, fast.epochs, fast.steps, fast.lr_step_fraction) == (640_000, 30, None, pytest.approx(2 / 3))
    # Salinas-A (86 × 83 = 7138 px) and Indian Pines (145 × 145 = 21025 px): 30 passes, as with 30 epochs
    for pixels, steps_per_epoch in ((86 * 83, 13), (145 * 145, 41)):
        length = run_length(fast, pixels)
        assert length.rule == "epochs (cap)" and length.fraction == 1.0
        assert length.contrastive_steps == 30 * steps_per_epoch  # 390 and 1230
        # StepLR ×0.1 after epoch 20 of 30: the drop falls on the same step
        assert lr_drop_interval(fast, length.contrastive_steps) == 20 * steps_per_epoch
        assert lr_at(fast, 20 * steps_per_epoch - 1, length.contrastive_steps) == fast.lr
        assert lr_at(fast, 20 * steps_per_epoch, length.contrastive_steps) == fast.lr * 0.1
        assert lr_at(fast, 30 * steps_per_epoch - 1, length.contrastive_steps) == fast.lr * 0.1
    assert run_length(fast, 145 * 145).contrastive_steps == 1230 and run_length(fast, 86 * 83).contrastive_steps == 390
    # past ~21 k pixels the budget decides: 1250 steps whatever the size
    for pixels in (4 * 145 * 145, 1024 ** 2, 4096 ** 2):
        length = run_length(fast, pixels)
        assert (length.contrastive_steps, length.rule) == (1250, "samples")
        assert length.fraction == pytest.approx(min(1.0, 640_000 / pixels))
    assert run_length(fast, 4096 ** 2).fraction < 0.04


def test_explicit_lengths_override_the_budget() -> None:
    pixels = 1024 ** 2
    assert run_length(load_config("fast", epochs=2), pixels).contrastive_steps == 2 * (pixels // 512)
    assert load_config("fast", epochs=2).samples is None
    assert run_length(load_config("fast", steps=77), pixels).contrastive_steps == 77
    assert run_length(load_config("fast", steps=77), 86 * 83).rule == "steps"
    # an explicit budget is not capped: 10 000 steps on Salinas-A are 717 passes
    explicit = load_config("fast", samples=5_120_000)
    assert explicit.epochs is None
    assert (run_length(explicit, 86 * 83).contrastive_steps, run_length(explicit, 86 * 83).rule) == (10_000, "samples")
    # a budget is whole batches, rounded down
    assert run_length(load_config("fast", samples=1000), pixels).contrastive_steps == 1
    # a config file setting only epochs means passes; setting both keeps the cap
    assert config_from_dict({"epochs": 10}, base=preset_config("fast")).samples is None
    both = config_from_dict({"epochs": 10, "samples": 100_000}, base=preset_config("fast"))
    assert (both.epochs, both.samples) == (10, 100_000)
    assert run_length(both, 86 * 83).rule == "epochs (cap)" and run_length(both, 10 ** 6).rule == "samples"
    # the paper preset: 200 epochs, ×0.1 every 20 epochs (every 10 % of the run)
    paper = preset_config("paper")
    assert paper.samples is None and run_length(paper, 145 * 145).contrastive_steps == 200 * 41
    assert lr_drop_interval(paper, 200 * 41) == 20 * 41
    assert lr_at(paper, 40 * 41, 200 * 41) == pytest.approx(paper.lr * 0.01)


@pytest.mark.parametrize("values, words", [
    ({"samples": 0}, "samples must be ≥ 1"), ({"samples": -5}, "samples must be ≥ 1"),
    ({"samples": 100, "batch_size": 512}, "less than one batch of 512"),
    ({"samples": None, "epochs": None}, "length of the run is not set"),
    ({"lr_step_fraction": 0.0}, "lr_step_fraction")])
def test_bad_budgets_are_one_line_errors(values: dict, words: str) -> None:
    with pytest.raises(HsiClusterError, match=words) as exc:
        config_from_dict(values, base=preset_config("fast"))
    assert "\n" not in str(exc.value)


def test_epochs_and_samples_together_are_refused() -> None:
    with pytest.raises(HsiClusterError, match="--samples and --epochs each set the length"):
        load_config("fast", epochs=3, samples=100_000)


# ------------------------------------------------------------ a budget shorter than one pass


def block_counts(sampler: PatchSampler, centres: np.ndarray) -> Counter:
    _, _, _, block_ids = sampler._locate(centres)
    return Counter(block_ids.tolist())


def test_a_budget_below_one_pass_draws_a_share_of_every_block(blocky: IngestedScene) -> None:
    store = Store.open(blocky.store)
    valid_per_block = store.valid_counts_per_block.astype(int)
    assert valid_per_block[0] == 0 and len(set(valid_per_block.tolist())) > 2  # unequal blocks, one empty
    total = int(valid_per_block.sum())
    config = budget_config(samples=total // 10)  # 10 % of one pass
    probe = PatchSampler(blocky.store, patch_size=5, batch_size=BATCH, seed=0)
    length = run_length(config, probe.valid_centres())
    assert length.rule == "samples" and length.fraction == pytest.approx((total // 10 // BATCH) * BATCH / total)
    # one pass at that fraction, batch size 1 so that no partial batch is dropped: every centre drawn counted
    sampler = PatchSampler(blocky.store, patch_size=5, batch_size=1, seed=0, fraction=length.fraction)
    drawn = np.concatenate(list(sampler._plan(0, 1)))
    assert len(np.unique(drawn)) == len(drawn)  # no centre twice in a pass
    counts = block_counts(sampler, drawn)
    for block, valid in enumerate(valid_per_block):
        expected = int(np.ceil(length.fraction * valid))
        assert counts.get(block, 0) == expected, f"block {block}: {counts.get(block, 0)} of {valid} valid"
        if valid:
            assert counts[block] >= 1 and abs(counts[block] - length.fraction * valid) < 1  # in proportion
    # the batches of the training sampler cover every non-empty block and give the steps the budget asks
    train_sampler = PatchSampler(blocky.store, patch_size=5, batch_size=BATCH, seed=0, fraction=length.fraction)
    assert train_sampler.batches_per_epoch() >= length.contrastive_steps
    batches = list(train_sampler)
    seen = block_counts(train_sampler, np.concatenate([b.rows * 56 + b.cols for b in batches]))
    assert set(seen) == {block for block, valid in enumerate(valid_per_block) if valid}
    # another epoch draws another share; the same epoch the same one; workers split it without overlap
    train_sampler.set_epoch(1)
    assert not np.array_equal(np.concatenate(list(train_sampler._plan(0, 1))),
                              np.concatenate([b.rows * 56 + b.cols for b in batches]))
    sharded = np.concatenate([c for shard in range(2) for c in sampler._plan(shard, 2)])
    assert np.array_equal(np.sort(sharded), np.sort(drawn))


def test_a_run_shorter_than_one_pass_records_its_budget(blocky: IngestedScene, tmp_path: Path) -> None:
    valid = int(blocky.valid.sum())
    config = budget_config(samples=valid // 10)
    lines: list[str] = []
    result = run(blocky, tmp_path / "m.ckpt", config, log=lines.append)
    steps = valid // 10 // BATCH
    assert result.steps == result.total_steps == steps and result.epochs == 1
    assert result.samples == steps * BATCH and result.budget == valid // 10
    training = torch.load(result.checkpoint, weights_only=True)["training"]
    assert training["samples_budget"] == valid // 10 and training["samples_drawn"] == steps * BATCH
    assert training["length_rule"] == "samples" and training["valid_centres"] == valid
    assert training["pass_fraction"] == pytest.approx(steps * BATCH / valid)
    assert any("each pass draws" in line and "of every block's pixels" in line for line in lines)


# --------------------------------------------------------------- the lr schedule, progress, resume


def test_the_lr_drops_at_the_fraction_of_the_run_and_progress_shows_total_and_eta(scene: IngestedScene,
                                                                                 tmp_path: Path) -> None:
    """20 steps (a budget of 640 samples, 1.4 passes); ×0.5 after half of them, mid-epoch."""
    config = budget_config(samples=20 * BATCH, lr_step_fraction=0.5, lr_gamma=0.5)
    calls: list[tuple[int, int, float, float]] = []
    lines: list[str] = []
    result = run(scene, tmp_path / "m.ckpt", config, log=lines.append,
                 progress=lambda step, total, m: calls.append((step, total, m["lr"], m["samples"])))
    assert result.steps == 20 and result.epochs == 2 and result.samples == 640
    assert [c[:2] for c in calls] == [(k, 20) for k in range(1, 21)]
    assert [c[2] for c in calls] == [config.lr] * 10 + [config.lr * 0.5] * 10
    assert [c[3] for c in calls] == [k * BATCH for k in range(1, 21)]
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert "step 14/20 (70%)" in epoch_lines[0] and "448 samples" in epoch_lines[0] and "ETA" in epoch_lines[0]
    assert "step 20/20" in epoch_lines[1] and "640 samples" in epoch_lines[1]
    # the epochs the progress counts, beside the passes (4 epochs read 2.88 passes, unexplained)
    assert any(line.startswith("training length: 20 steps of 32") and " in 2 epochs of up to 14 steps;" in line
               for line in lines), lines
    # a pass longer than 5 % of the run: progress lines inside it as well
    assert any(line.startswith("step 5/20") and "ETA" in line for line in lines)


def test_the_epochs_cap_applies_to_a_budget(scene: IngestedScene, tmp_path: Path) -> None:
    config = budget_config(samples=100_000, epochs=2)  # 3125 steps asked, 2 passes allowed
    result = run(scene, tmp_path / "m.ckpt", config)
    assert result.steps == 28 and result.epochs == 2 and result.budget == 100_000
    assert torch.load(result.checkpoint, weights_only=True)["training"]["length_rule"] == "epochs (cap)"


def test_resume_with_a_budget_ends_with_the_same_weights(scene: IngestedScene, tmp_path: Path) -> None:
    config = budget_config(samples=20 * BATCH, lr_step_fraction=0.5, lr_gamma=0.5)
    expected = run(scene, tmp_path / "a.ckpt", config)
    output = tmp_path / "b.ckpt"
    for k, stop in enumerate((7, 16)):  # before the lr drop, then after it in the second pass
        with pytest.raises(KeyboardInterrupt):
            run(scene, output, config, resume=k > 0, stop_after_steps=stop, checkpoint_every=3)
    result = run(scene, output, config, resume=True)
    assert result.steps == 20 and result.samples == 640
    a, b = (torch.load(p, weights_only=True) for p in (expected.checkpoint, output))
    assert all(torch.equal(a["state_dict"][name], b["state_dict"][name]) for name in a["state_dict"])
    assert a["training"]["history"] == b["training"]["history"]
    assert b["training"]["samples_drawn"] == 640
    # another budget for the unfinished run is refused, naming the setting
    with pytest.raises(KeyboardInterrupt):
        run(scene, tmp_path / "c.ckpt", config, stop_after_steps=3)
    with pytest.raises(CheckpointError, match="started with samples 640, not 960") as exc:
        run(scene, tmp_path / "c.ckpt", budget_config(samples=30 * BATCH, lr_step_fraction=0.5, lr_gamma=0.5),
            resume=True)
    assert "\n" not in str(exc.value)


def test_resume_of_a_checkpoint_with_the_epoch_schedule_is_refused(scene: IngestedScene, tmp_path: Path) -> None:
    output = tmp_path / "m.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, tiny_config(), stop_after_steps=2)
    partial = partial_checkpoint_path(output)
    old = torch.load(partial, weights_only=True)
    old["train_config"] = {k: v for k, v in old["train_config"].items() if k not in ("samples", "lr_step_fraction")}
    old["train_config"]["lr_step_epochs"] = 20
    save_checkpoint(old, partial)
    with pytest.raises(CheckpointError, match="older hsicluster.*start again with --overwrite instead of --resume") as exc:
        run(scene, output, tiny_config(), resume=True)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------ the CLI


def cli(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def tiny_train(tmp_path: Path, *args, **config):
    """``hsicluster train ARGS`` on the CPU with the tiny configuration (and ``config`` keys on top)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **config}))
    return cli("train", *args, "--config", path, "--device", "cpu")


@pytest.mark.parametrize("options", [["--samples", 640, "--epochs", 2], ["--samples", 640, "--steps", 2],
                                     ["--epochs", 1, "--steps", 2]])
def test_cli_length_options_are_mutually_exclusive(scene: IngestedScene, tmp_path: Path, options: list) -> None:
    output = tmp_path / "m.ckpt"
    result = cli("train", scene.store, "-k", 3, "-o", output, "--device", "cpu", *options)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "each set the length of the run; pass only one" in lines[0], result.stderr
    assert not output.exists()


@pytest.mark.parametrize("samples, words", [(0, "--samples"), (-3, "--samples"), (10, "less than one batch of 32")])
def test_cli_bad_budget(scene: IngestedScene, tmp_path: Path, samples: int, words: str) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = cli("train", scene.store, "-k", 3, "-o", tmp_path / "m.ckpt", "--config", config, "--device", "cpu",
                 "--samples", samples)
    assert result.exit_code == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cli_samples_trains_for_the_budget(scene: IngestedScene, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))  # epochs: 2 in the file; --samples replaces the length
    output = tmp_path / "m.ckpt"
    result = cli("train", scene.store, "-k", 3, "-o", output, "--config", config, "--device", "cpu",
                 "--samples", 5 * BATCH, "--work", tmp_path / "work")
    assert result.exit_code == 0, result.stderr
    assert "5 steps, 160 samples" in result.stdout
    assert "training length: 5 steps of 32" in result.stderr and "ETA" in result.stderr
    payload = torch.load(output, weights_only=True)
    assert payload["train_config"]["samples"] == 160 and payload["train_config"]["epochs"] is None
    assert payload["training"]["samples_drawn"] == 160


@pytest.mark.parametrize("samples, words", [(0, "--samples"), (-1, "--samples"), (511, "less than one batch of 512")])
def test_cli_bad_budget_with_the_preset_defaults(scene: IngestedScene, tmp_path: Path, samples: int, words: str) -> None:
    """``hsicluster train SCENE -k 3 --samples N`` as typed, no config file (batches of 512)."""
    output = tmp_path / "m.ckpt"
    result = cli("train", scene.store, "-k", 3, "-o", output, "--device", "cpu", "--samples", samples)
    assert result.exit_code == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not output.exists()


@pytest.mark.parametrize("length", [[], ["--samples", 10 * BATCH], ["--epochs", 2], ["--steps", 2]])
def test_cli_scene_with_fewer_valid_pixels_than_a_batch(tmp_path: Path, length: list) -> None:
    """20 valid pixels, batches of 32: whatever sets the length, a one-line error, exit code 2 (bad input), no output."""
    cube = np.full((12, 10, 10), -9999.0, dtype=np.float32)
    cube[:, :2, :] = np.random.default_rng(0).normal(500, 50, (12, 2, 10))
    small = make_scene(tmp_path / "small", height=10, width=10, cube=cube)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    output = tmp_path / "m.ckpt"
    result = cli("train", small.store, "-k", 3, "-o", output, "--config", config, "--device", "cpu", *length)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fewer" in lines[0] and "batch of 32" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not output.exists()


def test_cli_scene_whose_every_band_is_constant(tmp_path: Path) -> None:
    """Valid pixels, but no band varies (a different value per band, so no pixel is flat): a one-line input error
    naming the scene, exit code 2, no output; it was an 'unexpected ValueError', exit code 1."""
    cube = np.broadcast_to(np.arange(100.0, 112.0, dtype=np.float32)[:, None, None], (12, 40, 40)).copy()
    flat = make_scene(tmp_path / "flat", height=40, width=40, cube=cube)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    output = tmp_path / "m.ckpt"
    result = cli("train", flat.store, "-k", 3, "-o", output, "--config", config, "--device", "cpu")
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no band is usable" in lines[0] and "flat" in lines[0], result.stderr
    assert "unexpected" not in lines[0] and not output.exists()


def test_cli_warns_of_an_undeclared_fill_in_a_scene_of_few_bands(tmp_path: Path) -> None:
    """8 bands, a sixth of the pixels 0 in every band, no nodata for 0: the training log says which value to declare."""
    cube = np.random.default_rng(0).normal(500, 50, (8, 48, 40)).astype(np.float32)
    cube[:, :8] = 0.0
    filled = make_scene(tmp_path / "filled", height=48, width=40, cube=cube)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = cli("train", filled.store, "-k", 3, "-o", tmp_path / "m.ckpt", "--config", config, "--device", "cpu",
                 "--steps", 2)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    # prefixed as every warning of the CLI is (the training log's warnings read "warning: …" alone)
    assert "hsicluster: warning: 16.7% of the valid pixels hold 0 in every band" in result.stderr.splitlines()[0]
    assert "rio edit-info --nodata 0 SCENE" in result.output


def test_cli_more_clusters_than_the_centroid_sample_is_refused_before_training(tmp_path: Path) -> None:
    """150 valid pixels, centroids fitted on 100 of them: -k 120 (or --k-max 120) is refused up front
    (it trained to the end, then failed with an unexpected ValueError and left a partial checkpoint)."""
    cube = np.random.default_rng(0).normal(500, 50, (12, 10, 15)).astype(np.float32)
    small = make_scene(tmp_path / "small", height=10, width=15, cube=cube)
    output = tmp_path / "m.ckpt"
    for k in (["-k", 120], ["-k", "auto", "--k-max", 120]):
        result = tiny_train(tmp_path, small.store, *k, "-o", output, centroid_samples=100)
        assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "120 is more than the 100 pixels the cluster centroids are fitted on" in lines[0]
        assert not output.exists() and not list(tmp_path.glob("*.partial"))


def test_centroid_sample_takes_the_last_partial_batch(tmp_path: Path) -> None:
    """72 valid pixels in batches of 32: the feature centroids are fitted on all 72, not the 64 of whole batches."""
    cube = np.random.default_rng(0).normal(500, 50, (12, 8, 9)).astype(np.float32)
    small = make_scene(tmp_path / "small", height=8, width=9, cube=cube)
    result = tiny_train(tmp_path, small.store, "-k", 3, "-o", tmp_path / "m.ckpt", "--steps", 2)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "on 72 training pixels" in result.stdout + result.stderr


def test_cli_warns_of_training_scenes_in_other_units(tmp_path: Path) -> None:
    """Tiles of one archive, one in reflectance (÷ 10 000) among digital numbers: the log names the odd one; of a pair
    100× apart (percent against fractions, silent under 200× before) it names both."""
    cube = np.random.default_rng(0).normal(500, 50, (12, 30, 30)).astype(np.float32)
    counts = make_scene(tmp_path / "dn", height=30, width=30, cube=cube)
    counts2 = make_scene(tmp_path / "dn2", height=30, width=30, cube=cube[:, ::-1] * 1.2)
    reflectance = make_scene(tmp_path / "refl", height=30, width=30, cube=cube * 1e-4)
    percent = make_scene(tmp_path / "pct", height=30, width=30, cube=cube * 1e-2)
    for scenes, expected in (([counts, counts2, reflectance], "as much as the other training scenes"),
                             ([reflectance, percent], "their values vary 100× apart")):
        result = tiny_train(tmp_path, *[s.store for s in scenes], "-k", 3, "-o", tmp_path / "m.ckpt", "--steps", 2,
                            "--overwrite")
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        warned = [line for line in result.output.splitlines() if "other units or scaling" in line]
        assert len(warned) == 1 and "refl" in warned[0] and expected in warned[0], warned
    # --quiet silences the progress and the log, not the warnings (it silenced them all)
    quiet = tiny_train(tmp_path, counts.store, counts2.store, reflectance.store, "-k", 3, "-o", tmp_path / "m.ckpt",
                       "--steps", 2, "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.stdout == "", (quiet.stdout, quiet.stderr, quiet.exception)
    [line] = quiet.stderr.splitlines()
    assert line.startswith("hsicluster: warning: ") and "as much as the other training scenes" in line, line


def test_cli_projection_mnf_from_a_config_file(scene: IngestedScene, tmp_path: Path) -> None:
    """``projection: mnf`` in a ``--config`` file reaches the run: the log says so and the checkpoint records it;
    an unknown projection is a one-line usage error."""
    config = tmp_path / "mnf.yaml"
    config.write_text(yaml.safe_dump({**TINY, "projection": "mnf"}))
    output = tmp_path / "m.ckpt"
    result = cli("train", scene.store, "-k", 3, "-o", output, "--config", config, "--device", "cpu",
                 "--work", tmp_path / "work")
    assert result.exit_code == 0, result.stderr
    assert " MNF components" in result.stderr
    assert torch.load(output, weights_only=True)["train_config"]["projection"] == "mnf"
    config.write_text(yaml.safe_dump({**TINY, "projection": "ica"}))
    result = cli("train", scene.store, "-k", 3, "-o", tmp_path / "other.ckpt", "--config", config, "--device", "cpu")
    assert result.exit_code == 2 and "projection must be one of 'pca', 'mnf'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "other.ckpt").exists()


def test_cli_scene_whose_every_band_is_flagged_bad(tmp_path: Path) -> None:
    """An ENVI bad-band list of zeros and a declared fill: one line saying no band is usable, not first a
    warning that the (declared) fill may be undeclared."""
    from tests import helpers

    cube = helpers.synthetic_cube(24, 30, 30, "int16", seed=2)
    cube[:, :10] = -9999  # a swath's border, declared as the data ignore value
    scene = helpers.write_envi(tmp_path / "scene.img", cube, bbl=[False] * 24, nodata=-9999)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    output = tmp_path / "m.ckpt"
    result = cli("train", scene.path, "-k", 3, "-o", output, "--config", config, "--device", "cpu",
                 "--work", tmp_path / "work")
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("ingesting ") and len(lines) == 2, result.stderr  # the log, then the error alone
    assert lines[1].startswith("hsicluster: error: ") and "no band is usable: every band is flagged bad" in lines[1]
    assert not output.exists()


def test_python_and_pipeline_length_options_are_mutually_exclusive_too(scene: IngestedScene, tmp_path: Path) -> None:
    """``hc.train(steps=5, epochs=3)`` trained for 5 steps and ignored ``epochs`` (the command refused it), and a
    pipeline's train step that set both passed ``--dry-run``: both are refused now, naming them as their caller
    writes them."""
    import hsi_cluster as hc

    with pytest.raises(hc.HsiClusterError, match=r"^epochs and steps each set the length of the run; pass only one$"):
        hc.train(scene.store, k=3, device="cpu", steps=5, epochs=3)
    with pytest.raises(HsiClusterError, match="'samples' and 'epochs' each set the length of the run"):
        load_config("fast", inline={"samples": 640, "epochs": 2})  # a pipeline's config mapping: its keys
    assert load_config("fast", inline={"steps": 5}).steps == 5
