"""Training several runs and keeping the one the others agree with most (hsi_cluster.restarts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hsi_cluster.checkpoint import load_checkpoint
from hsi_cluster.cli import main
from hsi_cluster.restarts import agreement_matrix, most_central, planned_runs, run_seed, sample_labels
from hsi_cluster.train import partial_checkpoint_path, train
from tests.train_helpers import IngestedScene, make_scene, tiny_config
from tests.train_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

STEPS_PER_RUN = 2 * 14  # two epochs of 473 valid pixels // 32


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HSICLUSTER_WORK", str(tmp_path / "default-work"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> IngestedScene:
    return make_scene(tmp_path_factory.mktemp("scene"), height=24, width=20, structured=True, seed=1,
                      nan_pixels=4, nodata_pixels=3)


def run(scene: IngestedScene, output: Path, **kwargs):
    config = kwargs.pop("config", None) or tiny_config(restarts=3)
    kwargs = {"n_clusters": 3, "seed": 5, "device": "cpu", "work_dir": output.parent / "work", **kwargs}
    return train([scene.store], output=output, config=config, **kwargs)


@pytest.fixture(scope="module")
def three_runs(scene: IngestedScene, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("restarts") / "model.ckpt"
    steps: list[tuple[int, int]] = []
    lines: list[str] = []
    result = run(scene, output, progress=lambda step, total, metrics: steps.append((step, total)), log=lines.append)
    return output, result, steps, lines


# ----------------------------------------------------------------------------- pure parts


def test_planned_runs_fit_the_budget() -> None:
    assert planned_runs(3, 200_000, 700_000) == 3
    assert planned_runs(3, 300_000, 700_000) == 2
    assert planned_runs(3, 630_000, 700_000) == 1
    assert planned_runs(3, 5_000_000, 700_000) == 1  # never zero runs
    assert planned_runs(1, 10, 700_000) == 1
    assert [run_seed(4, r) for r in range(3)] == [4, 1004, 2004]


def test_the_most_agreed_with_run_is_chosen() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 3000)
    permuted = np.array([2, 0, 3, 1])[truth]  # the same partition, other cluster ids
    noisy = np.where(rng.random(3000) < 0.3, rng.integers(0, 4, 3000), truth)  # 30 % of pixels scrambled
    unrelated = rng.integers(0, 4, 3000)
    nmi = agreement_matrix(np.stack([unrelated, noisy, truth, permuted]))
    assert np.allclose(np.diag(nmi), 1.0) and np.allclose(nmi, nmi.T)
    assert nmi[2, 3] == pytest.approx(1.0) and nmi[0, 2] < 0.01
    chosen, mean_to_others = most_central(nmi)
    assert chosen == 2  # ties with its permutation: the first wins
    assert mean_to_others[2] == pytest.approx((nmi[2, 0] + nmi[2, 1] + 1.0) / 3)
    assert mean_to_others[0] == mean_to_others.min()
    with pytest.raises(ValueError, match="at least 2 runs"):
        most_central(np.eye(1))


# ----------------------------------------------------------------------------- training


def test_three_runs_keep_the_most_agreed_with_and_tidy_up(three_runs, scene: IngestedScene) -> None:
    output, result, steps, lines = three_runs
    payload = torch.load(output, weights_only=True)
    info = payload["training"]["restarts"]
    assert info["runs"] == 3 and info["seed"] == 5 and len(info["agreement"]) == 3
    assert info["chosen"] == int(np.argmax(info["agreement"]))
    assert payload["training"]["seed"] == run_seed(5, info["chosen"]) and payload["complete"] is True
    assert result.runs == 3 and result.chosen_run == info["chosen"] and result.agreement == info["agreement"]
    assert sorted(p.name for p in output.parent.iterdir() if p.name != "work") == ["model.ckpt", "model.loss.png"]
    assert steps[-1] == (3 * STEPS_PER_RUN, 3 * STEPS_PER_RUN)  # one progress scale over all runs
    assert [s for s, _ in steps] == list(range(1, 3 * STEPS_PER_RUN + 1))
    assert sum("keeping run" in line for line in lines) == 1 and sum(line.startswith("run ") for line in lines) == 3


def test_each_run_is_the_single_run_of_its_seed(three_runs, scene: IngestedScene, tmp_path: Path) -> None:
    output, result, *_ = three_runs
    single = tmp_path / "single.ckpt"
    run(scene, single, seed=run_seed(5, result.chosen_run), config=tiny_config(restarts=1))
    chosen = torch.load(output, weights_only=True)["state_dict"]
    alone = torch.load(single, weights_only=True)
    assert "restarts" not in alone["training"]
    assert all(torch.equal(chosen[name], alone["state_dict"][name]) for name in chosen)


def test_agreement_is_measured_on_the_same_pixels_for_every_run(three_runs, scene: IngestedScene) -> None:
    output, *_ = three_runs
    checkpoint = load_checkpoint(output)
    model = checkpoint.build_model()
    fill = checkpoint.payload["spectral"]["mean"].numpy()
    labels = sample_labels([model, model], [scene.store], patch_size=5, fill=fill, n_pixels=300, seed=5)
    assert labels.shape == (2, 300) and np.array_equal(labels[0], labels[1])
    everything = sample_labels([model], [scene.store], patch_size=5, fill=fill, n_pixels=10_000, seed=5)
    assert everything.shape == (1, 473)  # all the valid pixels when there are fewer than asked


def test_a_crash_during_the_runs_resumes_to_the_same_choice(three_runs, scene: IngestedScene, tmp_path: Path) -> None:
    expected_output, expected, *_ = three_runs
    output = tmp_path / "model.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(scene, output, stop_after_steps=5)
    folder = tmp_path / ".model.ckpt.runs"
    assert partial_checkpoint_path(folder / "run0.ckpt").exists() and not output.exists()
    result = run(scene, output, resume=True)
    assert not folder.exists() and result.agreement == expected.agreement
    got, want = torch.load(output, weights_only=True), torch.load(expected_output, weights_only=True)
    assert all(torch.equal(got["state_dict"][n], want["state_dict"][n]) for n in want["state_dict"])


def test_resume_a_chosen_run_to_train_longer(three_runs, scene: IngestedScene, tmp_path: Path) -> None:
    chosen_output, expected, *_ = three_runs
    output = tmp_path / "model.ckpt"
    output.write_bytes(chosen_output.read_bytes())
    for epochs in (3, 4):  # twice: the record of the choice survives further training
        result = run(scene, output, config=tiny_config(restarts=3, epochs=epochs), resume=True)
        assert result.runs == 1 and result.steps == epochs * 14
        training = torch.load(output, weights_only=True)["training"]
        assert training["seed"] == run_seed(5, expected.chosen_run)
        assert training["restarts"]["chosen"] == expected.chosen_run


def test_a_small_budget_trains_once(scene: IngestedScene, tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    result = run(scene, output, config=tiny_config(restarts=3, restart_samples=3 * STEPS_PER_RUN * 32 - 1))
    assert result.runs == 2  # two runs fit, not three
    result = run(scene, output, config=tiny_config(restarts=3, restart_samples=100), overwrite=True)
    assert result.runs == 1 and "restarts" not in torch.load(output, weights_only=True)["training"]


def test_cli_restarts_option(scene: IngestedScene, tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config().to_dict(), "restarts": 1}))
    output = tmp_path / "model.ckpt"
    result = CliRunner().invoke(main, ["train", str(scene.store), "-k", "3", "-o", str(output), "--config", str(config),
                                       "--restarts", "2", "--work", str(tmp_path / "work"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "best of 2 runs" in result.output and "keeping run" in result.output
    assert torch.load(output, weights_only=True)["training"]["restarts"]["runs"] == 2
    bad = CliRunner().invoke(main, ["train", str(scene.store), "-k", "3", "-o", str(tmp_path / "b.ckpt"),
                                    "--restarts", "0"])
    assert bad.exit_code == 2 and "--restarts" in bad.output
