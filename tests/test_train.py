"""Training end to end on tiny scenes: the checkpoint, resume determinism, bad input, the CLI.

Everything runs on the CPU with a dense backbone of width 8 and depth 2 (5 × 5 patches), 4 PCA
components and batches of 32 on a 24 × 20 scene: 14 steps per epoch, a few seconds per run.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner

import hsi_cluster
from hsi_cluster.checkpoint import CheckpointError, load_checkpoint
from hsi_cluster.cli import main
from hsi_cluster.data.augment import AugmentConfig
from hsi_cluster.data.sampler import PatchSampler
from hsi_cluster.errors import HsiClusterError, OutputError, Terminated, python_option_names
from hsi_cluster.io.store import Store
from hsi_cluster.model.projection import SpectralProjection
from hsi_cluster.stats import VALIDITY_RULES
from hsi_cluster.train import (
    TrainResult,
    fit_spectral_projection,
    partial_checkpoint_path,
    prepare_store,
    restart_checkpoint_path,
    train,
    training_range,
)
from tests import helpers
from tests.io.test_enmap import write_product
from tests.train_helpers import NODATA, TINY, IngestedScene, make_scene, structured_cube, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS_PER_EPOCH = 14  # 473 valid pixels // 32


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never ingest into ~/.cache from a test."""
    monkeypatch.setenv("HSICLUSTER_WORK", str(tmp_path / "default-work"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """24 × 20 × 12 float32 with NaN and nodata pixels (473 valid), ingested with 16-pixel chunks."""
    ingested = make_scene(tmp_path_factory.mktemp("scene"), height=24, width=20, structured=True, seed=1,
                          nan_pixels=4, nodata_pixels=3)
    assert ingested.valid.sum() == 473
    return ingested


@pytest.fixture(scope="module")
def other_scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """A different scene of the same shape and band count."""
    return make_scene(tmp_path_factory.mktemp("other"), height=24, width=20, structured=True, seed=7,
                      nan_pixels=4, nodata_pixels=3)


def resume_config(**overrides):
    """Two epochs with the learning rate stepping after half the run (the first epoch), so the schedule matters too."""
    return tiny_config(**{"epochs": 2, "lr_step_fraction": 0.5, "lr_gamma": 0.5, **overrides})


def run(scene: IngestedScene, output: Path, config=None, **kwargs) -> TrainResult:
    kwargs = {"n_clusters": 3, "seed": 0, "device": "cpu", "work_dir": output.parent / "work", **kwargs}
    return train([scene.store], output=output, config=config or resume_config(), **kwargs)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ after resuming: {different}"


def assert_no_output(output: Path) -> None:
    assert not output.exists(), f"{output} was written"
    assert not partial_checkpoint_path(output).exists()
    assert not output.with_suffix(".loss.png").exists()


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.fixture(scope="module")
def uninterrupted(scene: IngestedScene, tmp_path_factory: pytest.TempPathFactory):
    """Run A: two epochs, never stopped; its checkpoint payload, result and progress calls."""
    output = tmp_path_factory.mktemp("uninterrupted") / "model.ckpt"
    output.write_text("an old file that --overwrite replaces")
    steps: list[tuple[int, int]] = []
    lines: list[str] = []
    result = run(scene, output, overwrite=True, progress=lambda step, total, metrics: steps.append((step, total)),
                 log=lines.append)
    return torch.load(output, weights_only=True), result, steps, lines


# ------------------------------------------------------------------------------- a tiny run


def test_an_undeclared_fill_border_is_left_unlabelled(tmp_path: Path, tiny_yaml: Path) -> None:
    """A 24-band GeoTIFF whose border columns hold 0 in every band and no nodata value is declared (an
    orthorectified swath): training does not learn the border, and predict leaves it unlabelled."""
    cube = structured_cube(24, 24, 20, seed=5).astype(np.float32) + 10.0
    cube[:, :, :3] = 0.0
    written = helpers.write_geotiff(tmp_path / "swath.tif", cube, nodata=None)
    model, labels = tmp_path / "model.ckpt", tmp_path / "labels.tif"
    trained = cli("train", written.path, "-k", 3, "-o", model, "--config", tiny_yaml, "--epochs", 1, "--work",
                  tmp_path / "work", "--device", "cpu", "-q")
    assert trained.exit_code == 0, trained.stderr
    store = load_checkpoint(model).payload["scenes"][0]["store"]
    assert Store.open(store).valid[...].sum() == 24 * 17  # the border is not among the training pixels
    labelled = cli("predict", written.path, "-m", model, "-o", labels, "--tiles", 16, "-q")
    assert labelled.exit_code == 0, labelled.stderr
    with rasterio.open(labels) as raster:
        values = raster.read(1)
        assert (values[:, :3] == raster.nodata).all() and (values[:, 3:] != raster.nodata).all()


@pytest.mark.parametrize("flags", ["bbl", "none"])
def test_a_delivery_with_bad_bands_trains_and_labels(tmp_path: Path, tiny_yaml: Path, flags: str) -> None:
    """Two bad bands, one NaN everywhere and one at the nodata value (as many deliveries fill their
    water-vapour bands), flagged by an ENVI ``bbl`` or not flagged at all (GeoTIFF): training leaves
    them out, says so and records it, and predict on the delivery itself labels every pixel."""
    cube = structured_cube(12, 24, 20, seed=3).astype(np.float32)
    cube[4] = np.nan
    cube[7] = NODATA
    if flags == "bbl":
        wavelength, fwhm = helpers.spectral_axis(12)
        written = helpers.write_envi(tmp_path / "raw.img", cube, wavelength_nm=wavelength, fwhm_nm=fwhm,
                                     bbl=[0 if band in (4, 7) else 1 for band in range(12)], nodata=NODATA)
    else:
        written = helpers.write_geotiff(tmp_path / "raw.tif", cube, nodata=NODATA)
    model, labels = tmp_path / "model.ckpt", tmp_path / "labels.tif"
    trained = cli("train", written.path, "-k", 3, "-o", model, "--config", tiny_yaml, "--epochs", 1, "--work",
                  tmp_path / "work", "--device", "cpu")
    assert trained.exit_code == 0, trained.stderr
    assert ("left out 2 of 12 bands: 2 flagged bad (in the metadata, or empty at ingest) (bands 5, 8)"
            in trained.stdout + trained.stderr)
    assert load_checkpoint(model).payload["spectral"]["band_screen"]["flagged"] == [4, 7]
    labelled = cli("predict", written.path, "-m", model, "-o", labels, "--tiles", 16, "-q")
    assert labelled.exit_code == 0, labelled.stderr
    with rasterio.open(labels) as raster:
        assert set(np.unique(raster.read(1)).tolist()) <= {0, 1, 2}  # every pixel labelled, none left as nodata


def test_tiny_run_writes_a_complete_checkpoint(uninterrupted, scene: IngestedScene) -> None:
    payload, result, steps, lines = uninterrupted
    output = result.checkpoint
    assert helpers.listing(output.parent) == ["model.ckpt", "model.loss.png"]  # no .partial, no temp file
    assert payload["complete"] is True
    assert payload["library_version"] == hsi_cluster.__version__
    config = resume_config()
    assert payload["train_config"] == config.to_dict()
    assert payload["patch_size"] == 5 and payload["backbone"] == "dense"
    assert payload["model_config"] == {"in_bands": 12, "n_components": 4, "n_clusters": 3, "backbone": "dense",
                                       "backbone_kwargs": {"width": 8, "depth": 2}, "head_hidden": 16,
                                       "instance_dim": None, "assignment": "centroids",
                                       "centroid_features": "scales"}
    # K × (stem + 2 layers) × 8 features, each block centred and weighted
    assert payload["state_dict"]["centroid_head.centroids"].shape == (3, 24)
    assert payload["state_dict"]["centroid_head.weight"].shape == (24,)
    # centroid_features auto: the stages kept, and the silhouettes they were chosen on, logged and recorded
    choice = payload["training"]["scale_choice"]
    assert choice["candidates"] == [[0, 1, 2], [1, 2], [2]] and choice["stages"] in choice["candidates"]
    assert choice["silhouette"][choice["candidates"].index(choice["stages"])] == max(choice["silhouette"])
    left_out = [b for b in range(3) if b not in choice["stages"]]
    weight = payload["state_dict"]["centroid_head.weight"].reshape(3, 8)
    assert not weight[left_out].any() and bool((weight[choice["stages"]] > 0).all())
    assert sum(": silhouette " in line for line in lines) == 3 and sum("<- kept" in line for line in lines) == 1
    outliers = payload["training"]["centroid_outliers_left_out"]  # the tiny-cluster rule: recorded, logged if it acted
    assert outliers >= 0 and (outliers > 0) == any("outlying pixels formed clusters" in line for line in lines)
    assert payload["bands"] == 12
    assert payload["wavelength"] == pytest.approx(helpers.spectral_axis(12)[0].tolist())
    spectral = payload["spectral"]
    stats = Store.open(scene.store).band_stats()
    np.testing.assert_allclose(spectral["mean"].numpy(), stats.mean)
    np.testing.assert_allclose(spectral["std"].numpy(), stats.std)
    components = spectral["components"].numpy()
    assert components.shape == (4, 12) and payload["train_config"]["projection"] == "pca"  # the fast default
    np.testing.assert_allclose(components @ components.T, np.eye(4), atol=1e-5)
    # 12 bands: too few for the noise screen, none flagged or constant
    assert spectral["band_screen"] == {"flagged": [], "constant": [], "noisy": [], "min_shared_variance": 0.05}
    assert sum("spectral projection fitted on" in line and "all 12 bands used" in line for line in lines) == 1
    assert payload["scenes"][0]["shape"] == [12, 24, 20]
    # the model rebuilt from the checkpoint labels patches
    model = load_checkpoint(output).build_model()
    labels, confidence = model.predict_patches(torch.zeros(2, 12, 5, 5))
    assert labels.shape == (2,) and ((labels >= 0) & (labels < 3)).all()
    # the run itself
    assert result.steps == 2 * STEPS_PER_EPOCH and result.epochs == 2
    assert steps == [(k, 2 * STEPS_PER_EPOCH) for k in range(1, 2 * STEPS_PER_EPOCH + 1)]
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert [h["lr"] for h in result.history] == pytest.approx([config.lr, config.lr * 0.5])
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert result.loss_curve == output.with_suffix(".loss.png")
    assert result.loss_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_changes_the_weights_and_depends_on_the_seed(uninterrupted, scene: IngestedScene,
                                                              tmp_path: Path) -> None:
    payload, *_ = uninterrupted
    again = run(scene, tmp_path / "again.ckpt", config=resume_config(epochs=1), seed=0)
    first_epoch = torch.load(again.checkpoint, weights_only=True)["state_dict"]
    # one epoch is not two: the weights moved during the second epoch
    assert any(not torch.equal(first_epoch[name], payload["state_dict"][name]) for name in first_epoch
               if first_epoch[name].is_floating_point())
    other_seed = run(scene, tmp_path / "seed1.ckpt", config=resume_config(epochs=1), seed=1)
    assert any(not torch.equal(first_epoch[name], tensor)
               for name, tensor in torch.load(other_seed.checkpoint, weights_only=True)["state_dict"].items())


def test_the_radiometric_augmentation_trains_and_is_recorded(scene: IngestedScene, tmp_path: Path) -> None:
    config = resume_config(epochs=1)
    radiometric = resume_config(epochs=1, augment={"brightness": [0.8, 1.25], "spectral_tilt": 0.05})
    plain = run(scene, tmp_path / "plain.ckpt", config=config)
    changed = run(scene, tmp_path / "radiometric.ckpt", config=radiometric)
    saved = load_checkpoint(changed.checkpoint)
    augment = saved.payload["train_config"]["augment"]
    assert augment["brightness"] == [0.8, 1.25] and augment["spectral_tilt"] == 0.05
    # The option changes what the network sees: the same seed trains to other weights.
    a = torch.load(plain.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(changed.checkpoint, weights_only=True)["state_dict"]
    assert any(not torch.equal(a[name], b[name]) for name in a if a[name].is_floating_point())


# --------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("stops", [(5,), (STEPS_PER_EPOCH,), (3, STEPS_PER_EPOCH + 6)],
                         ids=["mid-epoch", "epoch-boundary", "twice"])
def test_resume_ends_with_the_same_weights(uninterrupted, scene: IngestedScene, tmp_path: Path,
                                           stops: tuple[int, ...]) -> None:
    expected, result_a, _, _ = uninterrupted
    output = tmp_path / "model.ckpt"
    partial = partial_checkpoint_path(output)
    for k, stop in enumerate(stops):
        with pytest.raises(KeyboardInterrupt):
            run(scene, output, resume=k > 0, stop_after_steps=stop, checkpoint_every=4)
        assert partial.exists() and not output.exists()
        state = torch.load(partial, weights_only=True)
        assert state["complete"] is False and state["training"]["step"] == stop
    result = run(scene, output, resume=True, checkpoint_every=4)
    assert output.exists() and not partial.exists()
    assert result.steps == result_a.steps
    final = torch.load(output, weights_only=True)
    assert final["complete"] is True
    assert_same_weights(final["state_dict"], expected["state_dict"])
    assert final["training"]["history"] == expected["training"]["history"], "the loss history differs after resuming"
    assert final["training"]["optimizer"]["param_groups"] == expected["training"]["optimizer"]["param_groups"]


def test_resume_a_finished_run_to_train_longer(scene: IngestedScene, tmp_path: Path) -> None:
    """A finished run trains further on the longer run's schedule; with no lr drop, exactly as one long run."""
    flat = {"lr_step_fraction": 1.0}
    expected = run(scene, tmp_path / "long.ckpt", config=resume_config(epochs=2, **flat))
    output = tmp_path / "model.ckpt"
    run(scene, output, config=resume_config(epochs=1, **flat))
    result = run(scene, output, config=resume_config(epochs=2, **flat), resume=True)
    assert result.steps == 2 * STEPS_PER_EPOCH and result.samples == 2 * STEPS_PER_EPOCH * 32
    assert_same_weights(torch.load(output, weights_only=True)["state_dict"],
                        torch.load(expected.checkpoint, weights_only=True)["state_dict"])


def test_resume_a_run_that_ended_part_way_through_an_epoch_finishes_that_epoch(scene: IngestedScene,
                                                                               tmp_path: Path) -> None:
    """A run whose length in steps ends inside an epoch, resumed to a longer one, continues that epoch: the
    longer run's full length, weights and per-epoch history as one long run (no lr drop), not a skipped rest."""
    flat = {"lr_step_fraction": 1.0, "epochs": None}
    expected = run(scene, tmp_path / "long.ckpt", config=resume_config(steps=2 * STEPS_PER_EPOCH, **flat))
    output = tmp_path / "model.ckpt"
    short = run(scene, output, config=resume_config(steps=STEPS_PER_EPOCH + 3, **flat))
    assert short.steps == STEPS_PER_EPOCH + 3 and short.epochs == 2
    assert [h["step"] for h in short.history] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 3]
    result = run(scene, output, config=resume_config(steps=2 * STEPS_PER_EPOCH, **flat), resume=True)
    assert result.steps == 2 * STEPS_PER_EPOCH and result.epochs == 2 and not result.already_finished
    final = torch.load(output, weights_only=True)
    assert_same_weights(final["state_dict"], torch.load(expected.checkpoint, weights_only=True)["state_dict"])
    assert [h["step"] for h in final["training"]["history"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert final["training"]["history"] == torch.load(expected.checkpoint, weights_only=True)["training"]["history"]


def test_resume_a_finished_run_says_so_and_leaves_it(scene: IngestedScene, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hsi_cluster.cli import main

    output = tmp_path / "model.ckpt"
    run(scene, output, config=resume_config(epochs=1))
    before, mtime = output.read_bytes(), output.stat().st_mtime_ns
    result = run(scene, output, config=resume_config(epochs=1), resume=True)
    assert result.already_finished and result.steps == STEPS_PER_EPOCH and result.epochs == 1
    assert output.read_bytes() == before and output.stat().st_mtime_ns == mtime  # not rewritten
    curve = output.with_suffix(".loss.png")
    assert result.loss_curve == curve
    curve.unlink()  # killed between the checkpoint's rename and the plot: the rerun draws it (it said nothing)
    again = run(scene, output, config=resume_config(epochs=1), resume=True)
    assert again.already_finished and again.loss_curve == curve and curve.is_file()
    assert output.read_bytes() == before
    import yaml

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(resume_config(epochs=1).to_dict()))
    cli = CliRunner().invoke(main, ["train", str(scene.store), "-k", "3", "-o", str(output), "--config",
                                    str(config_file), "--resume", "--work", str(tmp_path / "work"), "--device", "cpu"])
    assert cli.exit_code == 0, cli.stderr
    assert "training already finished (14 steps, 1 epoch); nothing to resume" in cli.stderr
    assert "samples/s" not in cli.output and cli.stdout == ""
    assert output.stat().st_mtime_ns == mtime


@pytest.fixture
def interrupted(scene: IngestedScene, tmp_path: Path) -> Path:
    """An output path whose run on ``scene`` stopped after 2 steps (OUTPUT.partial only)."""
    output = tmp_path / "model.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, stop_after_steps=2)
    return output


def test_a_fresh_run_over_an_interrupted_one_is_refused_unless_overwrite(interrupted: Path,
                                                                        scene: IngestedScene) -> None:
    partial = partial_checkpoint_path(interrupted)
    before = partial.read_bytes()
    with pytest.raises(HsiClusterError, match=r"model\.ckpt\.partial: an interrupted run of model\.ckpt kept its "
                       r"steps there; pass --resume to continue it, or --overwrite"):
        run(scene, interrupted)
    assert partial.read_bytes() == before and not interrupted.exists()  # its steps are not lost
    with pytest.raises(KeyboardInterrupt):  # --overwrite: the old steps go at once, so --resume cannot mix the runs
        run(scene, interrupted, overwrite=True, stop_after_steps=1)
    assert torch.load(partial, weights_only=True)["training"]["step"] == 1
    result = run(scene, interrupted, resume=True)
    assert result.steps == STEPS_PER_EPOCH * 2 and not partial.exists()


def test_info_says_a_partial_checkpoint_is_unfinished(interrupted: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(partial_checkpoint_path(interrupted))])
    assert result.exit_code == 0, result.output
    assert ("state         unfinished (2 of 28 steps; continue it with hsicluster train … --resume)"
            in result.stdout.splitlines())
    assert "centroids" not in result.stdout  # not fitted yet


def test_sigterm_stops_after_the_step_under_way_keeping_it(scene: IngestedScene, tmp_path: Path) -> None:
    """A scheduler's time limit (SIGTERM) stops the run as Ctrl-C does: the partial checkpoint holds every step."""
    output = tmp_path / "model.ckpt"

    def terminate_at_step_3(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        run(scene, output, progress=terminate_at_step_3, checkpoint_every=100)
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    assert torch.load(partial_checkpoint_path(output), weights_only=True)["training"]["step"] == 3
    assert run(scene, output, resume=True).steps == STEPS_PER_EPOCH * 2


@pytest.mark.parametrize("change", ["scene", "config", "K", "seed", "backbone", "preset", "projection"])
def test_resume_with_another_scene_or_config_is_refused(interrupted: Path, scene: IngestedScene,
                                                        other_scene: IngestedScene, change: str) -> None:
    partial = partial_checkpoint_path(interrupted)
    before = partial.read_bytes()
    kwargs: dict = {}
    target, config = scene, resume_config()
    if change == "scene":
        target = other_scene
    elif change == "config":
        config = resume_config(lr=0.5)
    elif change == "K":
        kwargs["n_clusters"] = 4
    elif change == "seed":
        kwargs["seed"] = 3
    elif change == "preset":  # another preset changes the length keys too: the message names the configuration
        config = resume_config(lr=0.5, epochs=None, samples=64 * 32)
    elif change == "projection":
        config = resume_config(projection="mnf")
    else:
        config = resume_config(backbone_kwargs={"width": 16, "depth": 2})
    with pytest.raises(CheckpointError, match="--resume") as exc:
        run(target, interrupted, config=config, resume=True, **kwargs)
    one_line(exc)
    if change in ("config", "preset", "backbone", "projection"):
        assert "another configuration" in str(exc.value)
    assert not interrupted.exists() and partial.read_bytes() == before


def test_resume_after_the_scene_file_changed_is_refused(scene: IngestedScene, other_scene: IngestedScene,
                                                       tmp_path: Path) -> None:
    raster = tmp_path / "scene.tif"
    shutil.copy(scene.path, raster)
    output = tmp_path / "model.ckpt"
    kwargs = {"n_clusters": 3, "output": output, "config": resume_config(), "device": "cpu",
              "work_dir": tmp_path / "work"}
    with pytest.raises(KeyboardInterrupt):
        train([raster], stop_after_steps=3, **kwargs)
    size = raster.stat().st_size
    shutil.copyfile(other_scene.path, raster)  # other pixels, same shape, same file size: only the time tells
    assert raster.stat().st_size == size
    before = partial_checkpoint_path(output).read_bytes()
    with pytest.raises(CheckpointError, match=f"{raster} was modified after training began") as exc:
        train([raster], resume=True, **kwargs)
    one_line(exc)
    assert not output.exists() and partial_checkpoint_path(output).read_bytes() == before


@pytest.mark.parametrize("kind", ["envi", "enmap"])
def test_resume_after_a_file_read_with_the_scene_changed_is_refused(scene: IngestedScene, tmp_path: Path,
                                                                   kind: str) -> None:
    """An edited ENVI header or EnMAP METADATA.XML makes the scene read differently: it is ingested again and a
    resume of a run on the scene as it was is refused; an unchanged one resumes, and its checkpoint lists the
    files read with the scene."""
    if kind == "envi":
        raster = helpers.write_envi(tmp_path / "scene.img", scene.cube, nodata=NODATA).path
        companion = raster.with_suffix(".hdr")
    else:
        product = write_product(tmp_path / "product")
        raster, companion = product.image, product.xml
    output, work = tmp_path / "model.ckpt", tmp_path / "work"
    kwargs = {"n_clusters": 3, "output": output, "config": resume_config(), "device": "cpu", "work_dir": work}
    with pytest.raises(KeyboardInterrupt):
        train([raster], stop_after_steps=2, **kwargs)
    (recorded,) = load_checkpoint(partial_checkpoint_path(output)).payload["scenes"]
    assert [file["path"] for file in recorded["companions"]] == [str(companion)]
    with pytest.raises(KeyboardInterrupt):
        train([raster], resume=True, stop_after_steps=3, **kwargs)  # unchanged: resumes
    assert len(list(work.glob("*.zarr"))) == 1
    helpers.edit_file(companion)
    before = partial_checkpoint_path(output).read_bytes()
    with pytest.raises(CheckpointError, match=f"{raster} was modified after training began") as exc:
        train([raster], resume=True, **kwargs)
    one_line(exc)
    assert len(list(work.glob("*.zarr"))) == 2, "the edited scene is ingested again"
    assert not output.exists() and partial_checkpoint_path(output).read_bytes() == before


def test_a_lone_file_keeps_the_scene_record_of_older_versions(scene: IngestedScene, tmp_path: Path) -> None:
    """A checkpoint's scene record for a lone file has the keys older versions wrote, so their checkpoints resume."""
    output = tmp_path / "model.ckpt"
    kwargs = {"n_clusters": 3, "output": output, "config": resume_config(), "device": "cpu",
              "work_dir": tmp_path / "work"}
    with pytest.raises(KeyboardInterrupt):
        train([scene.path], stop_after_steps=2, **kwargs)
    (recorded,) = load_checkpoint(partial_checkpoint_path(output)).payload["scenes"]
    # the pixel size (a georeferenced scene's, for predict's warning) is not part of what resume compares
    assert set(recorded) == {"store", "source", "size", "mtime_ns", "shape", "dtype", "pixel_side", "pixel_unit"}
    with pytest.raises(KeyboardInterrupt):
        train([scene.path], resume=True, stop_after_steps=3, **kwargs)


@pytest.mark.parametrize("length, key", [({"epochs": 1}, "epochs"), ({"samples": 640}, "samples"),
                                         ({"steps": 20}, "steps")])
def test_resume_of_an_unfinished_run_with_another_length_is_refused(interrupted: Path, scene: IngestedScene,
                                                                    length: dict, key: str) -> None:
    """The lr schedule is defined on the run's length: an unfinished run resumes only with the same one."""
    partial = partial_checkpoint_path(interrupted)
    before = partial.read_bytes()
    with pytest.raises(CheckpointError, match=f"--resume: model.ckpt.partial was started with {key} ") as exc:
        run(scene, interrupted, config=resume_config(**length), resume=True)
    one_line(exc)
    assert not interrupted.exists() and partial.read_bytes() == before


def test_resume_with_nothing_to_resume(scene: IngestedScene, tmp_path: Path) -> None:
    """Says to run without ``--resume`` (it said ``--overwrite``, which there was nothing to overwrite for)."""
    with pytest.raises(HsiClusterError, match="--resume: nothing to resume") as exc:
        run(scene, tmp_path / "model.ckpt", resume=True)
    one_line(exc)
    assert str(exc.value).endswith("run it without --resume") and "--overwrite" not in str(exc.value)
    # refused before any work: a raw scene was ingested first (minutes on a large one), then refused
    raw = helpers.write_geotiff(tmp_path / "raw.tif", helpers.synthetic_cube(4, 16, 16)).path
    with pytest.raises(HsiClusterError, match="nothing to resume"):
        train([raw], output=tmp_path / "raw.ckpt", n_clusters=3, seed=0, device="cpu", work_dir=tmp_path / "cache",
              config=resume_config(), resume=True)
    assert not (tmp_path / "cache").exists()
    assert_no_output(tmp_path / "model.ckpt")


def test_resume_from_a_broken_partial(scene: IngestedScene, tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    partial_checkpoint_path(output).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as exc:
        run(scene, output, resume=True)
    one_line(exc)
    assert not output.exists()


# ------------------------------------------------------------------------------ bad input


def raster(folder: Path, cube: np.ndarray, name: str = "bad") -> Path:
    return helpers.write_geotiff(folder / f"{name}.tif", cube, nodata=NODATA).path


def bad_scene(kind: str, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    if kind == "all-nodata":
        return raster(folder, np.full((12, 20, 20), NODATA, np.float32))
    if kind == "all-nan":
        return raster(folder, np.full((12, 20, 20), np.nan, np.float32))
    if kind == "smaller-than-patch":
        return raster(folder, rng.normal(500, 50, (12, 4, 4)).astype(np.float32))
    if kind == "too-few-bands":
        return raster(folder, rng.normal(500, 50, (3, 20, 20)).astype(np.float32))
    if kind == "k-above-valid-pixels":
        cube = np.full((12, 20, 20), NODATA, np.float32)
        cube[:, [1, 5, 9], [2, 6, 10]] = rng.normal(500, 50, (12, 3))
        return raster(folder, cube)
    if kind == "fewer-pixels-than-a-batch":
        cube = rng.normal(500, 50, (12, 20, 20)).astype(np.float32)
        cube[:, 5:, :] = NODATA  # 100 valid pixels < batch 128
        return raster(folder, cube)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, k, words", [
    ("all-nodata", 3, "every pixel is nodata"),
    ("all-nan", 3, "every pixel is nodata"),
    ("smaller-than-patch", 3, "smaller than"),
    ("too-few-bands", 3, "3 bands"),
    ("k-above-valid-pixels", 5, "valid pixels"),
    ("fewer-pixels-than-a-batch", 3, "batch"),
])
def test_bad_scene_is_a_one_line_error_and_writes_nothing(tmp_path: Path, kind: str, k: int, words: str) -> None:
    scene_path = bad_scene(kind, tmp_path)
    output = tmp_path / "model.ckpt"
    config = tiny_config(batch_size=128) if kind == "fewer-pixels-than-a-batch" else tiny_config()
    with pytest.raises(HsiClusterError, match=words) as exc:
        train([scene_path], n_clusters=k, output=output, config=config, device="cpu", work_dir=tmp_path / "work")
    one_line(exc)
    if kind != "k-above-valid-pixels":  # the user's file, not the cache store made from it
        assert str(exc.value).startswith(str(scene_path))
    assert_no_output(output)
    if kind in ("smaller-than-patch", "too-few-bands"):  # seen in the header: nothing ingested first
        assert not (tmp_path / "work").exists()


def test_an_empty_tile_of_an_archive_is_left_out_of_training(scene: IngestedScene, tmp_path: Path) -> None:
    """Of two tiles, one entirely nodata (outside the swath): the other trains, the log names the empty one, and
    the checkpoint lists only the tile used; with every tile empty, the one-line error."""
    good = helpers.write_geotiff(tmp_path / "good.tif", scene.cube, nodata=NODATA).path
    for folder in ("empty", "nan"):
        (tmp_path / folder).mkdir()
    empty = bad_scene("all-nodata", tmp_path / "empty")
    messages: list[str] = []
    result = train([good, empty], n_clusters=3, output=tmp_path / "m.ckpt", config=tiny_config(), device="cpu",
                   work_dir=tmp_path / "work", log=messages.append)
    assert [s["source"] for s in load_checkpoint(result.checkpoint).payload["scenes"]] == [str(good)]
    assert [m for m in messages if "left out of the training" in m] == [
        f"warning: {empty}: every pixel is nodata, NaN or fill (one value in every band); left out of the training"]
    with pytest.raises(HsiClusterError, match="all 2 scenes: every pixel is nodata") as exc:
        train([empty, bad_scene("all-nan", tmp_path / "nan")], n_clusters=3, output=tmp_path / "n.ckpt",
              config=tiny_config(), device="cpu", work_dir=tmp_path / "work")
    one_line(exc)


def test_a_sliver_tile_of_an_archive_is_left_out_of_training(scene: IngestedScene, tmp_path: Path) -> None:
    """A tile at an archive's edge one row high stopped the whole run ('smaller than the 5×5 patch') where an empty
    tile is left out; it is left out too, and the error stays for a run with no scene large enough."""
    good = helpers.write_geotiff(tmp_path / "good.tif", scene.cube, nodata=NODATA).path
    sliver = helpers.write_geotiff(tmp_path / "sliver.tif", scene.cube[:, :1], nodata=NODATA).path
    thin = helpers.write_geotiff(tmp_path / "thin.tif", scene.cube[:, :, :3], nodata=NODATA).path
    messages: list[str] = []
    result = train([good, sliver], n_clusters=3, output=tmp_path / "m.ckpt", config=tiny_config(), device="cpu",
                   work_dir=tmp_path / "work", log=messages.append)
    assert [s["source"] for s in load_checkpoint(result.checkpoint).payload["scenes"]] == [str(good)]
    assert [m for m in messages if "left out of the training" in m] == [
        f"warning: {sliver}: the scene (1×20 pixels) is smaller than the 5×5 patch; left out of the training"]
    with pytest.raises(HsiClusterError, match=r"every scene is smaller than the 5×5 patch \(the first: .*sliver.tif\); "
                                              "nothing to train on") as exc:
        train([sliver, thin], n_clusters=3, output=tmp_path / "n.ckpt", config=tiny_config(), device="cpu",
              work_dir=tmp_path / "work")
    one_line(exc)


@pytest.mark.parametrize("k", [1, 0, -3])
def test_k_below_two(scene: IngestedScene, tmp_path: Path, k: int) -> None:
    with pytest.raises(HsiClusterError, match="-k") as exc:
        run(scene, tmp_path / "model.ckpt", n_clusters=k)
    one_line(exc)
    assert_no_output(tmp_path / "model.ckpt")


def test_the_scene_itself_as_output_is_refused_even_with_overwrite(scene: IngestedScene, tmp_path: Path) -> None:
    raster = tmp_path / "scene.tif"
    shutil.copy(scene.path, raster)
    before = helpers.tree_snapshot(tmp_path)
    with pytest.raises(OutputError, match="is the scene, an input") as exc:
        train([raster], n_clusters=3, output=raster, config=tiny_config(), device="cpu", overwrite=True,
              work_dir=tmp_path / "work")
    one_line(exc)
    assert helpers.tree_snapshot(tmp_path) == before


def test_a_scene_of_several_as_output_is_refused(scene: IngestedScene, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "scene.tif", tmp_path / "b" / "scene.tif"  # same name, two folders
    for copy in (first, second):
        copy.parent.mkdir()
        shutil.copy(scene.path, copy)
    before = helpers.tree_snapshot(tmp_path)
    for output, number in ((first, 1), (second, 2)):
        with pytest.raises(OutputError, match=f"is scene {number}, an input"):
            train([first, second], n_clusters=3, output=output, config=tiny_config(), device="cpu", overwrite=True,
                  work_dir=tmp_path / "work")
    assert helpers.tree_snapshot(tmp_path) == before


def test_the_config_file_as_output_is_refused(scene: IngestedScene, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n")
    result = CliRunner().invoke(main, ["train", str(scene.path), "-k", "3", "-o", str(config), "--config", str(config),
                                       "--overwrite", "--work", str(tmp_path / "work")])
    assert result.exit_code == 2 and "is the --config file, an input" in result.stderr
    assert config.read_text() == "epochs: 1\n"


def test_a_cache_folder_that_cannot_be_made_is_named(scene: IngestedScene, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot create the cache folder for ingested scenes.*--work") as exc:
        train([scene.path], n_clusters=3, output=tmp_path / "model.ckpt", config=tiny_config(), device="cpu",
              work_dir=tmp_path / "a-file" / "work")
    one_line(exc)
    assert_no_output(tmp_path / "model.ckpt")


@pytest.mark.parametrize("parent", ["missing", "a-file"])
def test_output_folder_missing(scene: IngestedScene, tmp_path: Path, parent: str) -> None:
    if parent == "a-file":
        (tmp_path / parent).write_text("not a folder")
    output = tmp_path / parent / "model.ckpt"
    with pytest.raises(OutputError, match="does not exist" if parent == "missing" else "is a file, not a folder") as exc:
        train([scene.store], n_clusters=3, output=output, config=tiny_config(), device="cpu",
              work_dir=tmp_path / "work")
    one_line(exc)
    assert not output.parent.is_dir()
    assert helpers.listing(tmp_path) == ([] if parent == "missing" else ["a-file"])


def test_output_exists_without_overwrite(scene: IngestedScene, tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    output.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists") as exc:
        run(scene, output)
    one_line(exc)
    assert output.read_bytes() == b"precious"
    assert helpers.listing(tmp_path) == ["model.ckpt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(scene: IngestedScene, tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable") as exc:
            run(scene, folder / "model.ckpt", work_dir=tmp_path / "work")
        one_line(exc)
        assert helpers.listing(folder) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(scene: IngestedScene, tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError, match="cuda") as exc:
        run(scene, tmp_path / "model.ckpt", device="cuda")
    one_line(exc)
    assert_no_output(tmp_path / "model.ckpt")


def test_a_mask_with_several_scenes_is_refused(scene: IngestedScene, tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError, match="mask"):
        train([scene.store, scene.store], n_clusters=3, output=tmp_path / "m.ckpt", config=tiny_config(),
              device="cpu", mask=scene.valid)


# --------------------------------------------------------------------------- prepare_store


def test_prepare_store_ingests_once_and_reuses(scene: IngestedScene, tmp_path: Path) -> None:
    assert prepare_store(scene.store, tmp_path / "work") == scene.store  # a store is used as it is
    assert not (tmp_path / "work").exists()
    source = helpers.write_geotiff(tmp_path / "s.tif", scene.cube, nodata=NODATA).path
    messages: list[str] = []
    first = prepare_store(source, tmp_path / "work", log=messages.append)
    assert first.parent == tmp_path / "work" and first.suffix == ".zarr" and len(messages) == 1
    stamp = (first / "zarr.json").stat().st_mtime_ns
    again = prepare_store(source, tmp_path / "work", log=messages.append)
    assert again == first and len(messages) == 1 and (first / "zarr.json").stat().st_mtime_ns == stamp
    edited = scene.cube.copy()
    edited[0, 0, 0] += 1
    helpers.write_geotiff(source, edited, nodata=NODATA)
    os.utime(source, ns=(stamp + 10**9, stamp + 10**9))  # a different modification time, whatever the clock
    changed = prepare_store(source, tmp_path / "work", log=messages.append)
    assert changed != first and len(messages) == 2


def test_prepare_store_ingests_again_a_scene_whose_envi_header_changed(scene: IngestedScene, tmp_path: Path) -> None:
    source = helpers.write_envi(tmp_path / "s.img", scene.cube, nodata=NODATA)
    first = prepare_store(source.path, tmp_path / "work")
    assert prepare_store(source.header, tmp_path / "work") == first  # by its header too: the same scene
    helpers.edit_file(source.header)
    assert prepare_store(source.path, tmp_path / "work") != first


def test_prepare_store_ingests_again_a_cache_made_under_other_validity_rules(scene: IngestedScene,
                                                                           tmp_path: Path) -> None:
    """A store cached by a version whose rules of valid pixels differ (say, one that ignored flat fill) is made
    again, in place; one made under today's rules is reused."""
    import json

    source = helpers.write_geotiff(tmp_path / "s.tif", scene.cube, nodata=NODATA).path
    messages: list[str] = []
    first = prepare_store(source, tmp_path / "work", log=messages.append)
    meta_file = first / "zarr.json"
    document = json.loads(meta_file.read_text())
    assert document["attributes"]["hsicluster"]["validity_rules"] == VALIDITY_RULES
    document["attributes"]["hsicluster"]["validity_rules"] = VALIDITY_RULES - 1
    meta_file.write_text(json.dumps(document))
    again = prepare_store(source, tmp_path / "work", log=messages.append)
    assert again == first and len(messages) == 2
    assert Store.open(again).metadata["validity_rules"] == VALIDITY_RULES
    assert prepare_store(source, tmp_path / "work", log=messages.append) == first and len(messages) == 2


def test_prepare_store_reports_an_unreadable_scene(tmp_path: Path) -> None:
    with pytest.raises(HsiClusterError) as exc:
        prepare_store(tmp_path / "nothing.tif", tmp_path / "work")
    one_line(exc)


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def cli(*args: str):
    return CliRunner().invoke(main, list(map(str, args)))


def test_cli_train(scene: IngestedScene, tmp_path: Path, tiny_yaml: Path) -> None:
    output = tmp_path / "out.ckpt"
    result = cli("train", scene.path, "-k", 3, "-o", output, "--config", tiny_yaml, "--epochs", 1, "--work",
                 tmp_path / "work", "--device", "cpu", "-q")
    assert result.exit_code == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.stdout == ""
    payload = load_checkpoint(output).payload
    assert payload["complete"] and payload["model_config"]["n_clusters"] == 3
    assert payload["train_config"]["epochs"] == 1 and payload["patch_size"] == 5
    assert payload["training"]["step"] == STEPS_PER_EPOCH
    assert output.with_suffix(".loss.png").is_file()
    assert len(list((tmp_path / "work").glob("*.zarr"))) == 1  # the raster was ingested into --work
    # not quiet: a summary line naming the checkpoint; the store in --work is reused
    again = cli("train", scene.path, "-k", 3, "-o", output, "--config", tiny_yaml, "--steps", 2, "--work",
                tmp_path / "work", "--device", "cpu", "--overwrite")
    assert again.exit_code == 0, again.stderr
    assert str(output) in again.stdout
    assert load_checkpoint(output).payload["training"]["step"] == 2


@pytest.mark.parametrize("case", ["k1", "exists", "unknown-key", "mistyped-value", "missing-folder",
                                  "no-resume-source", "bad-epochs", "missing-scene"])
@pytest.mark.parametrize("quiet", [True, False])
def test_cli_train_bad_input(scene: IngestedScene, tmp_path: Path, tiny_yaml: Path, case: str, quiet: bool) -> None:
    output = tmp_path / "out.ckpt"
    args = ["train", scene.path, "-k", 3, "-o", output, "--config", tiny_yaml, "--work", tmp_path / "work",
            "--device", "cpu"]
    if case == "k1":
        args[3] = 1
    elif case == "exists":
        output.write_bytes(b"old")
    elif case == "unknown-key":
        tiny_yaml.write_text(yaml.safe_dump({**TINY, "epoch": 3}))
    elif case == "mistyped-value":  # was a TypeError traceback before values were checked
        tiny_yaml.write_text(yaml.safe_dump({**TINY, "lr": "fast"}))
    elif case == "missing-folder":
        args[5] = tmp_path / "nope" / "out.ckpt"
    elif case == "no-resume-source":
        args.append("--resume")
    elif case == "bad-epochs":
        args += ["--epochs", 0]
    else:
        args[1] = tmp_path / "missing.tif"
    result = cli(*args, *(["-q"] if quiet else []))
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    if case == "bad-epochs":  # click's own usage error
        assert "--epochs" in result.stderr
    else:
        errors = [line for line in lines if line.startswith("hsicluster: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
        if quiet:
            assert len(lines) == 1, result.stderr  # nothing but the error
        assert result.exit_code == 2
    assert "Traceback" not in result.stderr + result.stdout
    if case == "exists":
        assert output.read_bytes() == b"old"
    else:
        assert not output.exists()
    assert not partial_checkpoint_path(output).exists()


def test_dataloader_workers_steps_match_the_plan(scene: IngestedScene, tmp_path: Path) -> None:
    """With worker processes each worker drops its own partial batch: the step count must follow."""
    expected = PatchSampler(scene.store, patch_size=5, batch_size=32).batches_per_epoch(shards=2)
    assert expected < STEPS_PER_EPOCH  # the shards really drop more than one worker would
    calls: list[tuple[int, int]] = []
    result = run(scene, tmp_path / "model.ckpt", config=resume_config(epochs=1, workers=2),
                 progress=lambda step, total, metrics: calls.append((step, total)))
    assert result.steps == expected
    assert calls[-1] == (expected, expected)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["complete"] and payload["training"]["steps_per_epoch"] == expected


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_a_variance_fraction_keeps_as_many_components_as_it_needs(scene: IngestedScene, tmp_path: Path,
                                                                   fraction: float) -> None:
    config = resume_config(epochs=1, n_components=fraction)
    expected = fit_spectral_projection([scene.store], fraction, n_samples=config.pca_samples, seed=0).components
    assert 1 <= expected.shape[0] < 12
    messages: list[str] = []
    result = run(scene, tmp_path / "model.ckpt", config=config, log=messages.append)
    payload = load_checkpoint(result.checkpoint).payload
    assert payload["train_config"]["n_components"] == fraction
    assert payload["model_config"]["n_components"] == expected.shape[0]
    np.testing.assert_array_equal(payload["spectral"]["components"].numpy(), expected)
    assert any(f"{expected.shape[0]} PCA components ({fraction * 100:g} % of the variance)" in m for m in messages)
    labels, _ = load_checkpoint(result.checkpoint).build_model().predict_patches(torch.zeros(2, 12, 5, 5))
    assert labels.shape == (2,)


@pytest.mark.parametrize("variant", [{"instance_dim": 8, "instance_weight": 1.0}, {"entropy_weight": 0.5},
                                     {"self_label_epochs": 1, "self_label_threshold": 0.0}],
                         ids=["instance-projector", "cluster-balance", "self-labelling"])
def test_training_variants_train_and_reload(scene: IngestedScene, tmp_path: Path, variant: dict) -> None:
    baseline = run(scene, tmp_path / "baseline.ckpt", config=tiny_config())
    result = run(scene, tmp_path / "variant.ckpt", config=tiny_config(**variant))
    checkpoint = load_checkpoint(result.checkpoint)
    assert {k: checkpoint.payload["train_config"][k] for k in variant} == variant
    assert (checkpoint.build_model().instance_projector is not None) == ("instance_dim" in variant)
    assert all(np.isfinite(h["loss"]) for h in result.history)
    head = "cluster_head.net.2.weight"
    weights = checkpoint.payload["state_dict"]
    base_weights = load_checkpoint(baseline.checkpoint).payload["state_dict"]
    assert not torch.equal(weights[head], base_weights[head]), "the variant's objective changes training"


# --------------------------------------------------------------------------- several scenes


def geotiff(folder: Path, cube: np.ndarray, name: str, *, shift_nm: float = 0.0) -> Path:
    """``folder/name.tif`` (EPSG:32633, nodata −9999) with the usual wavelengths moved by ``shift_nm``."""
    folder.mkdir(parents=True, exist_ok=True)
    wavelengths, fwhm = helpers.spectral_axis(cube.shape[0])
    return helpers.write_geotiff(folder / f"{name}.tif", cube, nodata=NODATA, wavelength_nm=wavelengths + shift_nm,
                                 fwhm_nm=fwhm).path


def valid_spectra(*scenes: IngestedScene) -> np.ndarray:
    return np.concatenate([s.cube[:, s.valid].astype(np.float64).T for s in scenes])


@pytest.fixture(scope="module")
def third_scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    """A scene seen by no model: larger, other content, same bands."""
    return make_scene(tmp_path_factory.mktemp("third"), height=30, width=26, structured=True, seed=21,
                      nan_pixels=5, nodata_pixels=2)


@pytest.fixture(scope="module")
def two_scene_run(scene: IngestedScene, other_scene: IngestedScene, tmp_path_factory: pytest.TempPathFactory):
    """Two epochs on a raster (ingested on the fly) and a store together; the payload and the result."""
    output = tmp_path_factory.mktemp("two") / "model.ckpt"
    lines: list[str] = []
    result = train([scene.path, other_scene.store], n_clusters=3, output=output, config=resume_config(), seed=0,
                   device="cpu", work_dir=output.parent / "work", log=lines.append)
    return torch.load(output, weights_only=True), result, lines


def test_several_scenes_train_one_model_that_labels_a_third(two_scene_run, scene: IngestedScene,
                                                            other_scene: IngestedScene, third_scene: IngestedScene,
                                                            tmp_path: Path) -> None:
    from hsi_cluster.predict import predict_scene

    payload, result, lines = two_scene_run
    steps_per_epoch = (473 + 473) // 32  # one plan over both scenes' valid pixels
    assert result.steps == 2 * steps_per_epoch and payload["training"]["steps_per_epoch"] == steps_per_epoch
    assert [s["source"] for s in payload["scenes"]] == [str(scene.path), str(other_scene.path)]
    assert [s["shape"] for s in payload["scenes"]] == [[12, 24, 20]] * 2
    assert payload["scenes"][0]["store"] != str(scene.store)  # the raster was ingested into work_dir
    assert payload["wavelength"] == pytest.approx(helpers.spectral_axis(12)[0].tolist())
    pooled = valid_spectra(scene, other_scene)  # statistics over every valid pixel of both scenes
    np.testing.assert_allclose(payload["spectral"]["mean"].numpy(), pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(payload["spectral"]["std"].numpy(), pooled.std(axis=0), rtol=1e-9)
    assert any("on 2 scenes" in line for line in lines)
    labels_path = tmp_path / "third_labels.tif"
    predicted = predict_scene(third_scene.path, result.checkpoint, labels_path, device="cpu", tiles=16)
    assert predicted.valid_pixels == third_scene.valid.sum()
    with rasterio.open(labels_path) as src:
        labels = src.read(1)
        assert src.crs.to_epsg() == helpers.EPSG
    assert (labels[~third_scene.valid] == 255).all() and (labels[third_scene.valid] < 3).all()


def test_several_scenes_resume_to_the_same_weights_and_check_every_scene(two_scene_run, scene: IngestedScene,
                                                                         other_scene: IngestedScene,
                                                                         third_scene: IngestedScene,
                                                                         tmp_path: Path) -> None:
    expected, *_ = two_scene_run
    output = tmp_path / "model.ckpt"
    kwargs = {"n_clusters": 3, "output": output, "config": resume_config(), "device": "cpu",
              "work_dir": tmp_path / "work"}
    with pytest.raises(KeyboardInterrupt):
        train([scene.path, other_scene.store], stop_after_steps=35, checkpoint_every=10, **kwargs)
    partial = partial_checkpoint_path(output)
    before = partial.read_bytes()
    for scenes, words in (([scene.path], "2 scenes, not 1"), ([other_scene.store, scene.path], "scene 1 "),
                          ([scene.path, third_scene.path], "scene 2 ")):
        with pytest.raises(CheckpointError, match="--resume") as exc:
            train(scenes, resume=True, **kwargs)
        assert words in one_line(exc)
        assert partial.read_bytes() == before and not output.exists()
    train([scene.path, other_scene.store], resume=True, **kwargs)
    final = torch.load(output, weights_only=True)
    assert_same_weights(final["state_dict"], expected["state_dict"])
    assert final["training"]["history"] == expected["training"]["history"]


@pytest.mark.parametrize("case", ["bands", "wavelengths"])
def test_scenes_with_other_bands_are_refused_before_any_work(scene: IngestedScene, tmp_path: Path,
                                                             case: str) -> None:
    if case == "bands":
        odd, words = geotiff(tmp_path, scene.cube[:10], "ten"), "has 10 bands but"
    else:
        odd, words = geotiff(tmp_path, scene.cube, "shifted", shift_nm=4.5), "4.5 nm apart"
    output = tmp_path / "model.ckpt"
    with pytest.raises(HsiClusterError, match=words) as exc:
        train([scene.path, odd], n_clusters=3, output=output, config=tiny_config(), device="cpu",
              work_dir=tmp_path / "work")
    message = one_line(exc)
    assert str(scene.path) in message and str(odd) in message
    assert not (tmp_path / "work").exists(), "a scene was ingested before the check"
    assert_no_output(output)


def test_scenes_within_one_nanometre_train_together(scene: IngestedScene, tmp_path: Path) -> None:
    close = geotiff(tmp_path, scene.cube[:, ::-1].copy(), "close", shift_nm=0.8)
    result = train([scene.store, close], n_clusters=3, output=tmp_path / "m.ckpt", config=tiny_config(steps=2),
                   device="cpu", work_dir=tmp_path / "work")
    assert len(load_checkpoint(result.checkpoint).payload["scenes"]) == 2


def test_expand_scene_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hsi_cluster.io.paths import expand_scene_paths

    for name in ("archive/b.tif", "archive/a.tif", "archive/a.tif.aux.xml", "archive/deep/er/c.tif",
                 "archive/e.img", "archive/e.hdr", "archive/f.hdr", "archive/x.zarr/data/zarr.json",
                 "odd[1].tif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "archive"
    assert expand_scene_paths(["archive/*.tif"]) == [archive / "a.tif", archive / "b.tif"]
    assert expand_scene_paths(["archive/**/*.tif"]) == [archive / "a.tif", archive / "b.tif", archive / "deep/er/c.tif"]
    # sidecars, a header beside its binary and the insides of a store are not scenes of their own
    assert expand_scene_paths([str(archive / "*")]) == [archive / n for n in ("a.tif", "b.tif", "e.img", "f.hdr",
                                                                              "x.zarr")]
    assert archive / "x.zarr" in expand_scene_paths(["archive/**"])
    assert all(".zarr/" not in str(p) for p in expand_scene_paths(["archive/**"]))
    # order kept, repeats dropped, a literal name with glob characters kept as given
    assert expand_scene_paths(["archive/b.tif", "archive/*.tif", "odd[1].tif", "archive/x.zarr"]) == \
        [archive / "b.tif", archive / "a.tif", tmp_path / "odd[1].tif", archive / "x.zarr"]
    # a missing name, or a plain folder, is refused before any work (batch recorded it as a failed scene, exit 3)
    with pytest.raises(HsiClusterError, match=r"^missing.tif: no such file or directory; check the path$"):
        expand_scene_paths(["archive/b.tif", "missing.tif"])
    with pytest.raises(HsiClusterError, match=r"^archive/deep/: is a folder, not a scene or a store made by 'hsicluster "
                                              r"ingest'; for the scenes in it pass a quoted pattern, 'archive/deep/\*\.tif' "
                                              r"or 'archive/deep/\*\*/\*\.tif'$"):
        expand_scene_paths(["archive/deep/"])
    # one file named two ways (through '..' or a link) is one scene
    (tmp_path / "link.tif").symlink_to(archive / "a.tif")
    told: list[str] = []
    assert expand_scene_paths(["archive/a.tif", "archive/deep/../a.tif", "link.tif"], log=told.append) == \
        [archive / "a.tif"]
    assert told == ["2 of the 3 paths matched name a file already matched (by another pattern, or through a link): "
                    "1 scene, each taken once"]
    told.clear()
    expand_scene_paths(["archive/*.tif"], log=told.append)
    assert told == []  # nothing named twice: nothing said
    with pytest.raises(HsiClusterError, match=r"nothing/\*\*/\*\.tif: the pattern matches no scene") as exc:
        expand_scene_paths(["archive/*.tif", "nothing/**/*.tif"])
    one_line(exc)


def test_cli_trains_on_a_quoted_glob_of_scenes(scene: IngestedScene, other_scene: IngestedScene,
                                               tmp_path: Path, tiny_yaml: Path) -> None:
    first = geotiff(tmp_path / "archive", scene.cube, "a")
    second = geotiff(tmp_path / "archive" / "2024", other_scene.cube, "b")
    output = tmp_path / "model.ckpt"
    result = cli("train", tmp_path / "archive" / "**" / "*.tif", "-k", 3, "-o", output, "--config", tiny_yaml,
                 "--steps", 3, "--work", tmp_path / "work", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    # the matches in name order: "archive/2024/b.tif" sorts before "archive/a.tif"
    assert [s["source"] for s in load_checkpoint(output).payload["scenes"]] == [str(second), str(first)]
    assert len(list((tmp_path / "work").glob("*.zarr"))) == 2
    # a damaged file in the archive stopped the run: --exclude leaves it out, and the log says so
    (tmp_path / "archive" / "broken.tif").write_bytes(b"not a raster")
    refused = cli("train", tmp_path / "archive" / "**" / "*.tif", "-k", 3, "-o", output, "--config", tiny_yaml,
                  "--steps", 3, "--work", tmp_path / "work", "--device", "cpu", "-q", "--overwrite")
    assert refused.exit_code == 2 and "broken.tif" in refused.stderr
    excluded = cli("train", tmp_path / "archive" / "**" / "*.tif", "-k", 3, "-o", output, "--config", tiny_yaml,
                   "--steps", 3, "--work", tmp_path / "work", "--device", "cpu", "--overwrite",
                   "--exclude", tmp_path / "archive" / "broken*")
    assert excluded.exit_code == 0, excluded.stderr
    assert "left out 1 scene matching --exclude" in excluded.stderr
    assert [s["source"] for s in load_checkpoint(output).payload["scenes"]] == [str(second), str(first)]


@pytest.mark.parametrize("case", ["no-match", "bands", "wavelengths"])
def test_cli_several_scenes_bad_input(scene: IngestedScene, tmp_path: Path, tiny_yaml: Path, case: str) -> None:
    output = tmp_path / "out.ckpt"
    if case == "no-match":
        other, words = tmp_path / "archive" / "*.tif", "*.tif: the pattern matches no scene"
    elif case == "bands":
        other, words = geotiff(tmp_path, scene.cube[:10], "ten"), "has 10 bands but"
    else:
        other, words = geotiff(tmp_path, scene.cube, "shifted", shift_nm=-4.0), "4.0 nm apart"
    result = cli("train", scene.path, other, "-k", 3, "-o", output, "--config", tiny_yaml, "--work",
                 tmp_path / "work", "--device", "cpu", "-q")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsicluster: error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert_no_output(output)


def test_loss_curve_has_a_log_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss falls fast in the first epochs: on a linear axis the rest of the curve looks flat."""
    from matplotlib.figure import Figure

    from hsi_cluster.train import write_loss_curve

    scales: list[str] = []
    savefig = Figure.savefig

    def spy(self, *args, **kwargs):
        scales.append(self.axes[0].get_yscale())
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    falling = [{"epoch": e, "loss": loss} for e, loss in enumerate([6.0, 0.9, 0.5, 0.45], start=1)]
    assert write_loss_curve(falling, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    below_zero = [{"epoch": e, "loss": loss} for e, loss in enumerate([3.0, 0.1, -0.2], start=1)]
    write_loss_curve(below_zero, tmp_path / "b.png")
    assert scales == ["log", "symlog"]


# ------------------------------------------------------------------------------- -k auto


@pytest.fixture(scope="module")
def auto_run(scene: IngestedScene, tmp_path_factory: pytest.TempPathFactory):
    """A tiny ``-k auto --k-max 5`` run: its checkpoint payload, result and log lines."""
    output = tmp_path_factory.mktemp("auto") / "model.ckpt"
    lines: list[str] = []
    result = run(scene, output, n_clusters="auto", k_max=5, config=resume_config(epochs=1), log=lines.append)
    return torch.load(output, weights_only=True), result, lines


def test_k_auto_chooses_k_records_the_curve_and_labels_with_it(auto_run, scene: IngestedScene,
                                                               tmp_path: Path) -> None:
    from hsi_cluster.checkpoint import load_checkpoint
    from hsi_cluster.predict import label_patches

    payload, result, lines = auto_run
    choice = payload["training"]["k_choice"]
    assert payload["training"]["k_auto"] == {"k_max": 5}
    assert choice["candidates"] == [2, 3, 4, 5] and 2 <= choice["k"] <= 5 and result.k_choice == choice
    assert choice["distance"][choice["candidates"].index(choice["k"])] == max(choice["distance"])
    # The criterion of every candidate is logged, and the choice marked.
    assert sum(line.lstrip().startswith("K = ") for line in lines) == 4
    assert sum("<- chosen" in line for line in lines) == 1
    assert not any("warning" in line for line in lines)
    # The head trained with k_max clusters; the labels have the K chosen.
    assert payload["model_config"]["n_clusters"] == choice["k"]
    assert payload["state_dict"]["cluster_head.net.2.weight"].shape[0] == 5
    model = load_checkpoint(result.checkpoint).build_model()
    assert model.n_clusters == choice["k"]
    labels, _ = label_patches(model, scene.store, patch_size=5)
    assert set(np.unique(labels[scene.valid])) <= set(range(choice["k"]))


def test_k_auto_warns_when_k_max_leaves_few_pixels_per_cluster(scene: IngestedScene, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(scene, tmp_path / "model.ckpt", n_clusters="auto", k_max=60, config=resume_config(epochs=1),
                 log=lines.append)
    [warning] = [line for line in lines if line.startswith("warning:")]
    assert warning.startswith("warning: --k-max 60 leaves fewer than 10 of the ")
    assert "choose a --k-max of at most" in warning
    assert result.k_choice is not None and result.k_choice["k_max"] == 60


def test_a_second_training_of_the_same_output_is_refused(scene: IngestedScene, tmp_path: Path) -> None:
    """Two trainings of one checkpoint would write each other's periodic checkpoints: the second is refused."""
    from hsi_cluster.io.files import busy_output, exclusive_lock, output_lock_path

    output = tmp_path / "model.ckpt"
    with exclusive_lock(output_lock_path(output), busy_output(output), remove=True):
        with pytest.raises(OutputError, match=r"model.ckpt: another hsicluster command is writing it") as exc:
            run(scene, output)
        one_line(exc)
    assert not output.exists() and not partial_checkpoint_path(output).exists()


def test_k_auto_resumes_only_as_k_auto(scene: IngestedScene, tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, stop_after_steps=2)  # -k 3
    partial = partial_checkpoint_path(output)
    with pytest.raises(CheckpointError, match="was trained with -k 3; -k auto cannot continue it") as exc:
        run(scene, output, n_clusters="auto", k_max=5, resume=True)
    one_line(exc)
    auto = tmp_path / "auto.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, auto, n_clusters="auto", k_max=4, stop_after_steps=2)
    with pytest.raises(CheckpointError, match="was trained with -k auto --k-max 4") as exc:
        run(scene, auto, n_clusters=4, resume=True)
    one_line(exc)
    assert partial.exists() and not output.exists()
    finished = run(scene, auto, n_clusters="auto", k_max=4, resume=True)  # the same options continue it
    assert finished.k_choice is not None and finished.k_choice["k_max"] == 4
    with python_option_names(), pytest.raises(CheckpointError, match=r"was trained with k='auto' k_max=4; pass those"):
        run(scene, auto, n_clusters=4, resume=True, overwrite=True)  # the Python API names its keyword arguments


@pytest.mark.parametrize(("args", "message"), [
    (["-k", "auto", "--k-max", "1"], "--k-max must be at least 4, got 1"),
    (["-k", "auto", "--k-max", "3"], "--k-max must be at least 4, got 3: -k auto chooses the elbow inside the curve "
                                     "K = 2..k_max, between 3 and k_max - 1; for 2 or 3 clusters pass -k 2 or -k 3"),
    (["-k", "auto", "--k-max", "100000"], "--k-max 100000 is larger than the number of valid pixels (473)"),
    (["-k", "4", "--k-max", "8"], "--k-max only applies to -k auto"),
    (["-k", "many"], "'many' is neither a whole number of clusters nor 'auto'"),
    (["-k", "auto", "--preset", "paper"], "-k auto chooses K for the feature centroids; it needs assignment"),
])
def test_k_auto_bad_options_are_one_line_errors(scene: IngestedScene, tmp_path: Path, args: list[str],
                                                message: str) -> None:
    from click.testing import CliRunner

    from hsi_cluster.cli import main

    output = tmp_path / "model.ckpt"
    cli = CliRunner().invoke(main, ["train", str(scene.store), *args, "-o", str(output), "--work",
                                    str(tmp_path / "work"), "--device", "cpu", "--steps", "2"])
    assert cli.exit_code != 0
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[-1], cli.stderr
    assert_no_output(output)


def test_k_auto_is_read_in_any_case() -> None:
    from hsi_cluster.cli import ClusterCount

    assert [ClusterCount().convert(v, None, None) for v in ("AUTO", "Auto", " auto ", "7", 3)] == ["auto"] * 3 + [7, 3]


def test_restarts_keep_the_network_that_agrees_most_and_record_the_choice(scene: IngestedScene,
                                                                        tmp_path: Path) -> None:
    messages: list[str] = []
    steps: list[tuple[int, int]] = []
    output = tmp_path / "model.ckpt"
    result = run(scene, output, config=tiny_config(epochs=1, restarts=3), log=messages.append,
                 progress=lambda step, total, metrics: steps.append((step, total)))
    record = torch.load(output, weights_only=True)["training"]["restarts"]
    assert record["seeds"] == [0, 1000, 2000] and record == result.restart_choice
    chosen = record["chosen"]
    assert record["mean_agreement"][chosen] == max(record["mean_agreement"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["model.ckpt", "model.loss.png"]
    assert steps[-1][0] == steps[-1][1]
    assert steps[-1][1] == 3 * result.total_steps  # one bar over the three restarts
    assert any("<- kept" in m and f"seed {record['seeds'][chosen]}" in m for m in messages)
    (tmp_path / "alone").mkdir()
    alone = run(scene, tmp_path / "alone" / "model.ckpt", config=tiny_config(epochs=1), seed=record["seeds"][chosen])
    assert_same_weights(load_checkpoint(output).payload["state_dict"], load_checkpoint(alone.checkpoint).payload["state_dict"])


def test_restarts_resume_where_they_stopped_and_a_finished_choice_is_not_resumed(scene: IngestedScene,
                                                                                tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    config = tiny_config(epochs=1, restarts=2)
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, config=config, stop_after_steps=3)
    assert partial_checkpoint_path(restart_checkpoint_path(output, 0)).exists() and not output.exists()
    resumed = run(scene, output, config=config, resume=True)
    (tmp_path / "fresh").mkdir()
    fresh = run(scene, tmp_path / "fresh" / "model.ckpt", config=config)
    assert resumed.restart_choice == fresh.restart_choice
    assert_same_weights(load_checkpoint(output).payload["state_dict"], load_checkpoint(fresh.checkpoint).payload["state_dict"])
    with pytest.raises(HsiClusterError, match="was chosen among 2 restarts, which are gone") as exc:
        run(scene, output, config=config, resume=True)
    one_line(exc)


def test_cli_train_with_restarts_says_which_it_kept(scene: IngestedScene, tmp_path: Path, tiny_yaml: Path) -> None:
    output = tmp_path / "out.ckpt"
    result = cli("train", scene.store, "-k", "3", "-o", output, "--config", tiny_yaml, "--restarts", "2",
                 "--work", tmp_path / "work", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    record = torch.load(output, weights_only=True)["training"]["restarts"]
    kept = record["chosen"]
    assert f"kept restart {kept + 1} of 2 (seed {record['seeds'][kept]})" in result.stdout
    assert "restart 2 of 2 (seed 1000)" in result.stderr
    assert torch.load(output, weights_only=True)["train_config"]["restarts"] == 2
    bad = cli("train", scene.store, "-k", "3", "-o", tmp_path / "x.ckpt", "--restarts", "0")
    assert bad.exit_code == 2 and "--restarts" in bad.stderr


def test_mnf_projection_is_trained_recorded_and_reloaded(scene: IngestedScene, tmp_path: Path) -> None:
    config = resume_config(epochs=1, n_components=0.999, projection="mnf")
    expected = fit_spectral_projection([scene.store], 0.999, n_samples=config.pca_samples, seed=0,
                                       projection="mnf").components
    pca = fit_spectral_projection([scene.store], 0.999, n_samples=config.pca_samples, seed=0).components
    assert expected.shape == pca.shape and not np.allclose(np.abs(expected), np.abs(pca), atol=1e-2)
    messages: list[str] = []
    result = run(scene, tmp_path / "model.ckpt", config=config, log=messages.append)
    payload = load_checkpoint(result.checkpoint).payload
    assert payload["train_config"]["projection"] == "mnf"
    np.testing.assert_array_equal(payload["spectral"]["components"].numpy(), expected)
    assert any(f"{expected.shape[0]} MNF components (as many as PCA needs for 99.9 % of the variance)" in m
               for m in messages)


def test_resume_of_a_run_made_before_the_projection_option(scene: IngestedScene, tmp_path: Path) -> None:
    """A partial checkpoint of an older hsicluster has no ``projection`` in its config: it trained with PCA,
    so a PCA run resumes it (and an MNF run is refused)."""
    output = tmp_path / "model.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, stop_after_steps=2)
    partial = partial_checkpoint_path(output)
    state = torch.load(partial, weights_only=True)
    del state["train_config"]["projection"]
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match="another configuration"):
        run(scene, output, config=resume_config(projection="mnf"), resume=True)
    result = run(scene, output, resume=True)
    assert output.exists() and result.steps == torch.load(output, weights_only=True)["training"]["step"]


def test_ctrl_c_stops_at_a_step_and_leaves_a_checkpoint_to_resume(tmp_path: Path) -> None:
    """Ctrl-C before the first periodic checkpoint and inside the first pass lost the whole run (`--resume`: "neither
    m.ckpt.partial nor m.ckpt exists"); now the step under way finishes, the partial checkpoint is written, and
    `--resume` completes the run."""
    import signal
    import subprocess

    scene = helpers.write_geotiff(tmp_path / "scene.tif", structured_cube(12, 60, 60)).path
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "epochs"}))
    output = tmp_path / "m.ckpt"
    args = ["train", str(scene), "-k", "3", "-o", str(output), "--config", str(config), "--steps", "100",
            "--device", "cpu", "--checkpoint-every", "1000", "--work", str(tmp_path / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(helpers.python_module_command(*args), stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    for line in process.stderr:  # the first progress line inside the pass (every 5 steps): the loop runs
        if ": loss " in line:
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, rest
    partial = load_checkpoint(Path(f"{output}.partial"))
    assert 0 < partial.payload["training"]["step"] < 100 and "--resume" in rest
    resumed = subprocess.run(helpers.python_module_command(*args, "--resume"), capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(output).payload["training"]["step"] == 100


def test_a_checkpoint_past_the_file_size_limit_is_a_one_line_error(tmp_path: Path) -> None:
    """Under ``ulimit -f`` the checkpoint write failed inside torch ("unexpected RuntimeError: [enforce fail at
    inline_container.cc] . unexpected pos", exit 1): the bytes are written by Python now, and the error says what
    stopped it and what to do (exit 2, no checkpoint left)."""
    import resource
    import subprocess

    scene = helpers.write_geotiff(tmp_path / "scene.tif", structured_cube(12, 40, 40)).path
    store = tmp_path / "scene.zarr"
    assert subprocess.run(helpers.python_module_command("ingest", str(scene), "-o", str(store), "-q"),
                          capture_output=True, timeout=300).returncode == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "epochs"}))
    output = tmp_path / "m.ckpt"
    limit = 16 * 1024  # bytes: the checkpoint is larger, the store is already written

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(helpers.python_module_command("train", str(store), "-k", "3", "-o", str(output), "--config",
                                                          str(config), "--steps", "3", "--device", "cpu"),
                            capture_output=True, text=True, timeout=300, preexec_fn=limited,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"hsicluster: error: a file grew past the largest size allowed (writing {output}"), lines
    assert "raise the limit (ulimit -f)" in lines[-1] and not output.exists()


def test_the_training_range_covers_the_radiometric_augmentations_gains(tmp_path: Path) -> None:
    """A model trained to take a scene 15 % brighter for the same ground (``augment.brightness``) keeps a range that
    holds it, so predict does not warn of the very scenes it was trained for; without the option it lies outside."""
    scene = make_scene(tmp_path, structured=True, height=60, width=60)
    fit = fit_spectral_projection([scene.store], 3, n_samples=5000, seed=0)
    assert fit.sample is not None and fit.sample.shape == (3600, 12)
    plain = training_range(fit, AugmentConfig.mild(), seed=0)
    augmented = training_range(fit, AugmentConfig.mild(brightness=(0.8, 1.25)), seed=0)
    projection = SpectralProjection(fit.mean, fit.std, fit.components).pixel_map()
    brighter = projection(fit.sample.astype(np.float32) * 1.15)
    assert plain.outside(brighter).mean() > 0.5
    assert augmented.outside(brighter).mean() < 0.05
    assert augmented.outside(projection(fit.sample.astype(np.float32))).mean() < 0.05
