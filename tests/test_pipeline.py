"""Pipelines: the schema's one-line errors, a tiny real pipeline run like make, ``hsicluster run``.

The tiny pipeline reads a 40 × 37 × 12 synthetic GeoTIFF (EPSG:32633) and a 4-class ground truth
beside it (inputs relative to the YAML file), and trains the ``fast`` preset shrunk to a 5 × 5
dense model for a handful of steps, so every run of it takes a few seconds.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from hsi_cluster.checkpoint import load_checkpoint
from hsi_cluster.cli import main
from hsi_cluster.errors import HsiClusterError, MetadataWarning
from hsi_cluster.pipeline import KINDS, PipelineError, load_pipeline, plan, run
from tests import helpers
from tests.io.test_enmap import write_product
from tests.predict_helpers import read_raster
from tests.train_helpers import TINY, structured_cube

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
SHARED_DATA = REPO.parent / "shared" / "data"
ALL_STEPS = ["ingest", "train", "predict", "evaluate", "report"]
HEIGHT, WIDTH = 40, 37


def truth_map(shift: int = 0) -> np.ndarray:
    """Four classes following the cube's two strongest latent factors; a band of unlabelled pixels."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    truth = 1 + (np.sin((yy + shift) / 5.0) > 0) + 2 * (np.cos(xx / 4.0) > 0)
    truth[:, :3] = 0
    return truth.astype(np.uint8)


def write_data(folder: Path, *, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cube = structured_cube(12, HEIGHT, WIDTH, seed=seed)
    wavelengths, fwhm = helpers.spectral_axis(12)
    helpers.write_geotiff(folder / "scene.tif", cube, nodata=-9999.0, wavelength_nm=wavelengths, fwhm_nm=fwhm)
    np.save(folder / "truth.npy", truth_map())


def tiny_steps(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    """ingest → train → predict → evaluate → report on ``../data`` (relative to the YAML file)."""
    steps = [
        {"kind": "ingest", "scene": "../data/scene.tif", "output": "scene.zarr"},
        {"kind": "train", "scene": "scene.zarr", "clusters": 4, "steps": 3, "device": "cpu",
         "config": {k: v for k, v in TINY.items() if k != "epochs"}, "output": "model.ckpt"},
        {"kind": "predict", "scene": "@ingest", "model": "@train", "tiles": 16, "device": "cpu",
         "output": "labels.tif"},
        {"kind": "evaluate", "labels": "labels.tif", "truth": "../data/truth.npy", "title": "Tiny scene",
         "output": "scores.json"},
        {"kind": "report", "kmeans": [0]},
    ]
    for step in steps:
        step.update(changes.get(step["kind"], {}))
    return steps


def write_pipeline(path: Path, steps: list[dict[str, Any]], **top: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "tiny", **top, "steps": steps}, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/data (scene, truth), tmp_path/pipes/tiny.yaml; the current directory is tmp_path."""
    write_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return write_pipeline(tmp_path / "pipes" / "tiny.yaml", tiny_steps())


# --------------------------------------------------------------------------------------------
# schema


def _error(path: Path) -> str:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize(("index", "change", "expected"), [
    (2, {"tile": 16}, "steps[2].tile: unknown key; did you mean 'tiles'?"),
    (2, {"tiles": "big"}, "steps[2].tiles: expected an integer ≥ 8, got 'big'"),
    (2, {"tiles": 4}, "steps[2].tiles: expected an integer ≥ 8, got 4"),
    (2, {"match_brightness": "yes"}, "steps[2].match_brightness: expected true or false, got 'yes'"),
    (1, {"clusters": True}, "steps[1].clusters: expected an integer ≥ 2 or 'auto', got True"),
    (1, {"clusters": "many"}, "steps[1].clusters: expected an integer ≥ 2 or 'auto', got 'many'"),
    (1, {"clusters": "auto", "k_max": 1}, "steps[1].k_max: expected an integer ≥ 4, got 1"),
    (1, {"clusters": "auto", "k_max": 3}, "steps[1].k_max: expected an integer ≥ 4, got 3"),
    (1, {"clusters": None}, "steps[1]: missing required key 'clusters'"),
    (1, {"scene": None}, "steps[1]: missing required key 'scene' (or 'scenes'"),
    (1, {"scenes": ["a.tif"]}, "steps[1]: give either 'scene' or 'scenes', not both"),
    (1, {"sample": 2}, "steps[1].sample: needs 'scenes'"),
    (1, {"kind": "trian"}, "steps[1].kind: unknown step kind 'trian'; did you mean 'train'?"),
    (1, {"preset": "quick"}, "steps[1].preset: expected one of fast, paper, got 'quick'"),
    (1, {"config": {"learning_rate": 0.1}}, "steps[1].config: unknown config key(s) ['learning_rate']"),
    (1, {"seeds": [0, 0]}, "steps[1].seeds: expected a non-empty list of distinct integer seeds"),
    (1, {"seeds": [0, 1], "seed": 2}, "steps[1]: give either 'seed' or 'seeds', not both"),
    (1, {"epochs": 3, "steps": 40}, "steps[1]: give either 'epochs' or 'steps', not both"),
    (2, {"model": "@trian"}, "steps[2].model: '@trian' names no earlier step; did you mean '@train'?"),
    (2, {"model": "@evaluate"}, "steps[2].model: '@evaluate' names a step that does not come before this one"),
    (2, {"model": "@ingest"}, "steps[2].model: '@ingest' is the output of ingest step 'ingest'; model must be "
                              "the output of a train step"),
    (3, {"output": "labels.tif"}, "steps[3].output: 'labels.tif' is already an output of step 'predict'"),
    (4, {"summarise": ["train"]}, "steps[4].summarise: 'train' is a train step"),
    (0, {"name": "train"}, "steps[1]: its default name 'train' is already the name of an earlier step"),
    (1, {"name": "ingest"}, "steps[1].name: 'ingest' is already the name of an earlier step"),
])
def test_schema_errors_name_the_key_path(tmp_path: Path, index: int, change: dict, expected: str) -> None:
    steps = tiny_steps()
    steps[index].update(change)
    steps[index] = {k: v for k, v in steps[index].items() if v is not None}
    message = _error(write_pipeline(tmp_path / "x.yaml", steps))
    assert expected in message, message


def test_a_kmeans_baseline_without_an_evaluate_step_is_refused(tmp_path: Path) -> None:
    """``report: {kmeans: [0, 1]}`` with no evaluate step to score it beside did nothing, in silence."""
    write_data(tmp_path / "data")
    steps = tiny_steps()
    del steps[3]  # the evaluate step
    path = write_pipeline(tmp_path / "pipes" / "x.yaml", steps)
    message = _error(path)
    assert "steps[3].kmeans: the k-means baseline is scored beside the report's evaluate steps, and it summarises " \
           "none; add an evaluate step before it, or drop kmeans" in message, message
    steps[3]["kmeans"] = False
    write_pipeline(path, steps)
    assert run(path, dry_run=True).steps[-1].kind == "report"  # valid without it


def test_schema_errors_at_the_top_level(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "step": tiny_steps()}))
    assert "x.yaml: step: unknown key; did you mean 'steps'?" in _error(path)
    path.write_text(yaml.safe_dump({"name": "x"}))
    assert "x.yaml: top level: missing required key 'steps'" in _error(path)
    path.write_text(yaml.safe_dump({"name": "x", "steps": ["ingest"]}))
    assert "x.yaml: steps[0]: expected a mapping with a 'kind'" in _error(path)
    path.write_text(yaml.safe_dump({"name": "x", "steps": [{"scene": "a.tif"}]}))
    assert "x.yaml: steps[0]: missing required key 'kind' (one of " + ", ".join(KINDS) + ")" in _error(path)
    path.write_text(yaml.safe_dump({"name": "x y", "steps": tiny_steps()}))
    assert "x.yaml: name: expected a name of letters" in _error(path)


def test_yaml_errors_are_one_line_with_the_position(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("steps:\n  - kind: predict\n    model: @train\n")
    message = _error(path)
    assert "not valid YAML (line 3, column 12" in message and 'quote references to steps' in message
    path.write_text("steps:\n  - kind: predict\n    tiles: 8\n    tiles: 16\n")
    assert "line 4, column 5: key 'tiles' is written twice" in _error(path)
    assert "no such pipeline file" in _error(tmp_path / "missing.yaml")


def test_shipped_pipelines_validate() -> None:
    files = sorted(PIPELINES.glob("*.yaml"))
    assert {f.name for f in files} >= {"indian_pines.yaml", "salinas_a.yaml", "archive.yaml"}
    for path in files:
        pipeline = load_pipeline(path)
        assert pipeline.steps and pipeline.steps[-1].kind == "report", path
    # the benchmark pipelines' inputs resolve (relative to pipelines/) to the files that exist
    plans = plan(load_pipeline(PIPELINES / "salinas_a.yaml"))
    assert plans[0].jobs[0].inputs["scene"] == REPO / "hsi_cluster/sample_data/salinas_a/SalinasA_corrected.hdr"
    if SHARED_DATA.is_dir():
        plans = plan(load_pipeline(PIPELINES / "indian_pines.yaml"))
        assert plans[0].jobs[0].inputs["scene"] == SHARED_DATA / "indian_pines/Indian_pines_corrected.npy"


def test_documented_example_validates(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "pipelines.md").read_text()
    example = doc[doc.index("# Pipelines"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    pipeline = load_pipeline(write_text(tmp_path / "pipelines" / "example.yaml", example))
    assert [step.kind for step in pipeline.steps] == ["ingest", "train", "predict", "evaluate", "report"]


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# a tiny pipeline, run like make


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}


def test_tiny_pipeline_runs_skips_and_reruns_what_depends_on_a_change(project: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    first = run(project, log=lines.append)
    workdir = tmp_path / "runs" / "tiny"  # the default: runs/NAME under the current directory
    assert first.pipeline.workdir == workdir
    assert first.ran == ALL_STEPS and not first.failures
    labels, meta = read_raster(workdir / "labels.tif")
    assert meta["crs"].to_epsg() == helpers.EPSG and labels.shape == (HEIGHT, WIDTH)
    scores = json.loads((workdir / "scores.json").read_text())["scores"]
    assert scores["n_scored"] == int((truth_map() != 0).sum()) and 0 < scores["acc"] <= 1
    summary = json.loads((workdir / "report.json").read_text())
    (section,) = summary["evaluations"]
    assert section["title"] == "Tiny scene" and section["runs"][0]["acc"] == scores["acc"]
    assert section["kmeans"][0]["seed"] == 0 and section["kmeans_k"] == 4
    assert [row["step"] for row in summary["steps"]] == ALL_STEPS[:-1]
    markdown = (workdir / "report.md").read_text()
    for text in ("# tiny", "## Tiny scene", "| SSCC |", "| k-means, seed 0 |", "Per-class accuracy", "## Steps"):
        assert text in markdown
    assert any(line.startswith("train: running (never ran)") for line in lines)

    # nothing changed: every step is skipped and nothing is rewritten (here through the command line)
    before = _mtimes(workdir)
    second = run(project)
    assert second.skipped == ALL_STEPS and second.ran == [] and second.report == workdir / "report.md"
    cli = CliRunner().invoke(main, ["run", str(project)])
    assert cli.exit_code == 0, cli.stderr
    evaluated, summary_line, report_line = cli.stdout.splitlines()
    assert evaluated == (f"evaluate: ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  Kappa {scores['kappa']:.3f}  "
                         f"ARI {scores['ari']:.3f}")
    assert summary_line.startswith("0 of 5 steps ran (5 up to date) in ")
    assert summary_line.endswith(f"(workdir {workdir})")
    assert report_line == f"report: {workdir / 'report.md'}"
    assert cli.stderr.splitlines() == [f"{name}: up to date, skipped" for name in ALL_STEPS]
    quiet = CliRunner().invoke(main, ["run", str(project), "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == f"report: {workdir / 'report.md'}\n" and quiet.stderr == ""
    assert _mtimes(workdir) == before

    # new ground truth: only evaluate and the report depend on it
    np.save(tmp_path / "data" / "truth.npy", truth_map(shift=2))
    dry = run(project, dry_run=True)
    assert {s.name: s.status for s in dry.steps} == {"ingest": "up to date", "train": "up to date",
                                                     "predict": "up to date", "evaluate": "would run",
                                                     "report": "would run"}
    assert dry.outcome("evaluate").reason == "input ../../data/truth.npy changed"
    assert _mtimes(workdir) == before  # a dry run writes nothing
    third = run(project)
    assert third.ran == ["evaluate", "report"] and third.skipped == ["ingest", "train", "predict"]

    # a changed parameter reruns its step (and what reads its output), never what comes before it
    write_pipeline(project, tiny_steps(predict={"tiles": 8}))
    assert run(project, dry_run=True).outcome("predict").reason == "parameters changed (tiles)"
    fourth = run(project)
    assert "predict" in fourth.ran and "report" in fourth.ran and not {"ingest", "train"} & set(fourth.ran)
    assert np.array_equal(read_raster(workdir / "labels.tif")[0], labels)  # tile size never changes labels

    # an option added later, at the value that gives the results of before, leaves the state up to date; set, it
    # reruns its step
    write_pipeline(project, tiny_steps(predict={"tiles": 8, "match_brightness": False}))
    assert run(project, dry_run=True).outcome("predict").status == "up to date"
    write_pipeline(project, tiny_steps(predict={"tiles": 8, "match_brightness": True}))
    assert run(project, dry_run=True).outcome("predict").reason == "parameters changed (match_brightness)"

    # a changed scene reruns everything downstream of it
    write_data(tmp_path / "data", seed=5)
    np.save(tmp_path / "data" / "truth.npy", truth_map(shift=2))
    dry = run(project, dry_run=True)
    assert [s.status for s in dry.steps] == ["would run"] * 5
    assert dry.outcome("train").reason == "after 'ingest'"
    assert run(project).ran == ALL_STEPS

    # --force reruns, --only limits the run to a step
    forced = run(project, force=True, only=["evaluate"])
    assert forced.ran == ["evaluate"] and forced.outcome("train").status == "not selected"
    cli = CliRunner().invoke(main, ["run", str(project), "--only", "report", "--force"])
    assert cli.exit_code == 0 and cli.stderr.splitlines() == ["report: running (forced)", "    k-means (K = 4, seed 0) "
                                                              "on scene.zarr", cli.stderr.splitlines()[-1]]
    assert cli.stderr.splitlines()[-1].startswith("report: done in ")

    # an output removed by hand is made again
    (workdir / "scores.json").unlink()
    assert run(project, dry_run=True).outcome("evaluate").reason == "output scores.json is missing"
    assert run(project).ran[0] == "evaluate" and (workdir / "scores.json").is_file()


@pytest.mark.parametrize("envi", [False, True], ids=["geotiff", "envi"])
def test_a_file_read_with_the_scene_is_an_input_of_its_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            envi: bool) -> None:
    """An EnMAP product's METADATA.XML and an ENVI header (here upper-case, as delivered) are inputs of a step that
    reads the scene: editing or removing one reruns the step; unchanged, it is skipped."""
    product = write_product(tmp_path / "product", envi=envi)
    monkeypatch.chdir(tmp_path)
    path = write_pipeline(tmp_path / "pipes" / "enmap.yaml",
                          [{"kind": "ingest", "scene": f"../product/{product.image.name}", "output": "scene.zarr"}])
    workdir = tmp_path / "runs" / "tiny"
    assert run(path).ran == ["ingest"]
    assert run(path).skipped == ["ingest"]
    companions = [product.image.with_suffix(".HDR"), product.xml] if envi else [product.xml]
    for companion in companions:
        helpers.edit_file(companion)
        key = os.path.relpath(companion, workdir)
        assert run(path, dry_run=True).outcome("ingest").reason == f"input {key} changed"
        assert run(path).ran == ["ingest"]
        assert run(path).skipped == ["ingest"]
    product.xml.unlink()  # the image now reads as stored
    assert run(path, dry_run=True).outcome("ingest").reason == f"input {os.path.relpath(product.xml, workdir)} is missing"
    assert run(path).ran == ["ingest"]
    assert run(path).skipped == ["ingest"]


def test_seeds_fan_out_to_one_output_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    config = write_text(tmp_path / "pipes" / "tiny_config.yaml",  # a config file beside the pipeline this time
                        yaml.safe_dump({k: v for k, v in TINY.items() if k != "epochs"}))
    steps = tiny_steps(train={"seeds": [0, 1], "steps": 2, "config": config.name},
                       predict={"output": "labels/{seed}.tif"}, evaluate={"labels": "@predict"},
                       report={"kmeans": False, "output": "summary.md"})
    path = write_pipeline(tmp_path / "pipes" / "seeds.yaml", steps, workdir="out")
    result = run(path)
    workdir = tmp_path / "out"
    assert result.outcome("train").jobs_run == 2
    for seed in (0, 1):
        assert (workdir / f"model-seed{seed}.ckpt").is_file()
        assert (workdir / "labels" / f"{seed}.tif").is_file()
        assert (workdir / f"scores-seed{seed}.json").is_file()
    (section,) = json.loads((workdir / "summary.json").read_text())["evaluations"]
    accs = [run_["acc"] for run_ in section["runs"]]
    assert [run_["seed"] for run_ in section["runs"]] == [0, 1]
    assert section["mean"]["acc"][0] == pytest.approx(np.mean(accs))
    assert section["mean"]["acc"][1] == pytest.approx(np.std(accs))
    assert "| SSCC, mean ± std (2 seeds) |" in (workdir / "summary.md").read_text()

    # one seed's labels removed: the dry run says what the run does, one job of predict and of evaluate
    # (it said "evaluate: would run (2 of 2 jobs)", following the predict step as a whole)
    (workdir / "labels" / "1.tif").unlink()
    dry = run(path, dry_run=True)
    assert [(s.status, s.jobs_run, s.jobs) for s in dry.steps] == [
        ("up to date", 0, 1), ("up to date", 0, 2), ("would run", 1, 2), ("would run", 1, 2), ("would run", 1, 1)]
    assert dry.outcome("evaluate").reason == "input labels/1.tif is missing"
    assert dry.outcome("report").reason == "after 'predict', 'evaluate'"
    rerun = run(path)
    # the labels come back identical, so the scores stay up to date (a dry run cannot know that)
    assert [(s.name, s.status, s.jobs_run) for s in rerun.steps[2:]] == [
        ("predict", "ran", 1), ("evaluate", "skipped", 0), ("report", "ran", 1)]


def test_a_seed_placeholder_in_a_step_that_runs_once_is_refused(project: Path, tmp_path: Path) -> None:
    """``seed: 7`` with ``output: m_{seed}.ckpt`` wrote a file named literally ``m_{seed}.ckpt``."""
    with pytest.raises(PipelineError, match=r"steps\[1\]\.output: 'm_\{seed\}\.ckpt' places a seed, but the step "
                                            r"runs once, not per seed"):
        run(write_pipeline(project, tiny_steps(train={"seed": 7, "output": "m_{seed}.ckpt"})))
    assert not list((tmp_path / "runs").rglob("*{seed}*"))


def test_a_workdir_holding_another_pipelines_runs_is_refused(project: Path, tmp_path: Path) -> None:
    """Two pipelines of other names with one workdir overwrote each other's model and labels in silence."""
    steps = tiny_steps()[:2]
    first = write_pipeline(tmp_path / "pipes" / "first.yaml", steps, name="first", workdir="shared")
    second = write_pipeline(tmp_path / "pipes" / "second.yaml", steps, name="second", workdir="shared")
    assert run(first).failures == []
    model = (tmp_path / "shared" / "model.ckpt").read_bytes()
    with pytest.raises(PipelineError, match=r"second.yaml: its workdir .*shared holds the runs of the pipeline "
                                            r"'first', whose files this one would overwrite"):
        run(second)
    assert (tmp_path / "shared" / "model.ckpt").read_bytes() == model
    assert run(first).skipped == ["ingest", "train"]


def test_missing_input_and_only_name_errors(project: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"steps\[3\]\.truth: .*truth2\.npy does not exist"):
        run(write_pipeline(project, tiny_steps(evaluate={"truth": "../data/truth2.npy"})))
    write_pipeline(project, tiny_steps())
    with pytest.raises(PipelineError, match="--only evalute: no step of that name; did you mean 'evaluate'"):
        run(project, only=["evalute"])
    with pytest.raises(PipelineError, match=r"steps\[2\]: input .*scene\.zarr does not exist; run step 'ingest' first"):
        run(project, only=["predict"])


# --------------------------------------------------------------------------------------------
# batch steps (run_batch stubbed: its own tests run it on dask for real)


def test_a_sample_passes_over_files_that_cannot_be_opened(tmp_path: Path) -> None:
    """`sample: 3` drew a corrupt or an empty file as readily as a scene: the training stopped on it, and removing
    it moved the sample onto the next bad file. Such files now give their place to the next scene in hash order,
    each named with its reason, so the sample is the one the good scenes alone would give."""
    from hsi_cluster.pipeline.plan import sample_scenes

    good = [helpers.write_geotiff(tmp_path / f"good{i}.tif", helpers.synthetic_cube(4, 6, 7, "float32", seed=i)).path
            for i in range(5)]
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "corrupt.tif").write_bytes(good[0].read_bytes()[:300])
    everything = sorted(tmp_path.glob("*.tif"))
    assert tmp_path / "empty.tif" in sample_scenes(everything, 4)  # by hash: good2, good1, good0, empty, good3, …
    passed_over: dict[Path, str] = {}
    chosen = sample_scenes(everything, 4, passed_over=passed_over)
    assert chosen == sample_scenes(sorted(good), 4) == [tmp_path / f"good{i}.tif" for i in range(4)]
    assert list(passed_over) == [tmp_path / "empty.tif"] and "empty" in passed_over[tmp_path / "empty.tif"], passed_over
    all_of_them: dict[Path, str] = {}
    assert sample_scenes(everything, 10, passed_over=all_of_them) == sorted(good)
    assert set(all_of_them) == {tmp_path / "empty.tif", tmp_path / "corrupt.tif"}


def test_exclude_leaves_scenes_out_of_train_and_batch_steps(tmp_path: Path) -> None:
    """A scene of the archive that fails every time marked the batch step failed on every run (exit 3), and only
    deleting it from the archive helped: `exclude` (paths or globs) leaves it out, and the dry run says so."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        helpers.write_geotiff(archive / f"scene{i}.tif", helpers.synthetic_cube(4, 6, 7, "float32", seed=i))
    (archive / "broken.tif").write_bytes(b"not a raster")
    steps = [{"kind": "train", "scenes": "archive/*.tif", "exclude": "archive/broken.tif", "clusters": 3,
              "output": "model.ckpt"},
             {"kind": "batch", "scenes": ["archive/*.tif"], "exclude": ["archive/broken*", "archive/scene2.tif"],
              "model": "model.ckpt", "output": "labels"}]
    path = write_pipeline(tmp_path / "archive.yaml", steps)
    train_plan, batch_plan = plan(load_pipeline(path))
    assert [p.name for p in train_plan.jobs[0].inputs["scenes"]] == ["scene0.tif", "scene1.tif", "scene2.tif"]
    assert [p.name for p in batch_plan.jobs[0].inputs["scenes"]] == ["scene0.tif", "scene1.tif"]
    lines: list[str] = []
    run(path, dry_run=True, log=lines.append)
    assert "    exclude: left out 1 scene" in lines and "    exclude: left out 2 scenes" in lines, lines
    steps[1]["exclude"] = "archive/*.tif"
    with pytest.raises(PipelineError, match=r"steps\[1\]\.exclude: leaves out every scene"):
        plan(load_pipeline(write_pipeline(tmp_path / "archive.yaml", steps)))


def test_archive_pipeline_samples_trains_and_batches_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    import time
    from types import SimpleNamespace

    class Frozen(dt.datetime):  # a failed job's finishing time (to the second) is in the report's timings: the
        @classmethod            # two failed batch runs below must finish in the same second, however slow the machine
        def now(cls, tz: dt.tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls(2026, 12, 7, 8, 0, 0, tzinfo=tz)

    monkeypatch.setattr("hsi_cluster.pipeline.state.dt", SimpleNamespace(datetime=Frozen, timezone=dt.timezone))
    # and so is each step's duration: the two failed batch runs must last as long (to the millisecond) on a loaded
    # machine too, where the 0.3 s below took 0.301 s once and 0.304 s the next time, so the report ran again
    ticks = itertools.count(step=0.5)
    monkeypatch.setattr("hsi_cluster.pipeline.runner.time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    archive = tmp_path / "pipes" / "archive"
    for i in range(3):
        write_data(archive / f"s{i}", seed=i)
        (archive / f"s{i}" / "truth.npy").unlink()
        (archive / f"s{i}" / "scene.tif").rename(archive / f"scene{i}.tif")
    calls: list[dict[str, Any]] = []

    def fake_run_batch(scenes: list[str], checkpoint: Path, outdir: Path, **options: Any) -> Any:
        calls.append({"scenes": scenes, "checkpoint": checkpoint, "outdir": outdir, **options})
        time.sleep(0.3)  # a batch that took time, which the report gives though a scene failed (it gave 0.0)
        records = [{"source": s, "output": str(Path(outdir) / (Path(s).stem + "_labels.tif")),
                    "status": "failed" if s == scenes[-1] else "done",
                    "error": "boom" if s == scenes[-1] else None, "seconds": 0.1, "pixels": 1480,
                    "valid_pixels": 1480, "sha256": "0",
                    "warnings": [f"{s}: every pixel is nodata"] if s != scenes[-1] else []} for s in scenes]
        manifest = Path(outdir) / "manifest.json"
        gone = {"source": "/archive/removed.tif", "status": "failed", "error": "of a scene since removed"}
        manifest.write_text(json.dumps({"scenes": {gone["source"]: gone, **{r["source"]: r for r in records}}}))
        return type("BatchResult", (), {"manifest": manifest, "records": records, "stale_stac": [],
                                        "done": [r for r in records if r["status"] == "done"],
                                        "failed": [r for r in records if r["status"] == "failed"]})()

    monkeypatch.setattr("hsi_cluster.batch.run_batch", fake_run_batch)
    monkeypatch.chdir(tmp_path)
    steps = [{"kind": "train", "scenes": "archive/*.tif", "sample": 1, "clusters": 3, "steps": 2, "device": "cpu",
              "config": {k: v for k, v in TINY.items() if k != "epochs"}, "output": "model.ckpt"},
             {"kind": "batch", "scenes": ["archive/*.tif"], "model": "model.ckpt", "exclude_trained": True,
              "tiles": 16, "workers": 1, "output": "labels"},
             {"kind": "report"}]
    path = write_pipeline(tmp_path / "pipes" / "archive.yaml", steps)
    lines: list[str] = []
    result = run(path, log=lines.append)
    (call,) = calls
    # the warnings a worker kept of a scene reach the log, as `hsicluster batch` prints them
    assert f"    warning: {call['scenes'][0]}: every pixel is nodata" in lines
    (trained,) = [s["source"] for s in load_checkpoint(tmp_path / "runs" / "tiny" / "model.ckpt").payload["scenes"]]
    everything = [str(archive / f"scene{i}.tif") for i in range(3)]
    assert trained in everything and call["scenes"] == [s for s in everything if s != trained]
    assert call["checkpoint"] == tmp_path / "runs" / "tiny" / "model.ckpt" and call["workers"] == 1
    assert result.outcome("batch").status == "failed"
    assert result.failures == [f"batch: {call['scenes'][-1]}: boom"]
    markdown = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "2 scenes: 1 done, 0 skipped (already done), 1 failed" in markdown and "| boom |" in markdown
    assert "since removed" not in markdown  # the manifest's record of an earlier run's scene is not this run's
    [batch_row] = [line for line in markdown.splitlines() if line.startswith("| batch | batch |")]
    assert float(batch_row.split(" | ")[3]) >= 0.3, batch_row
    # the failed batch is not recorded as done: the next run retries it, says why, the rest is up to date
    dry: list[str] = []
    assert run(path, dry_run=True, log=dry.append).outcome("batch").reason == "failed last time"
    # the scenes the pipeline chose are named: which ones `sample` picked, how many `exclude_trained` leaves
    assert f"    sample: 1 scene, {Path(trained).name}" in dry
    assert "    exclude_trained: labels 2 scenes, not those the model trains on" in dry
    time.sleep(1.1)  # the failed runs finish in other seconds on the clock, not on the frozen one
    again = run(path)
    assert again.ran == ["batch"] and again.skipped == ["train", "report"] and len(calls) == 2  # same manifest

    runner = CliRunner()
    outcome = runner.invoke(main, ["run", str(path), "-q"])
    assert outcome.exit_code == 3
    *warned, failed = outcome.stderr.strip().splitlines()  # -q: the failure and the scenes' warnings, nothing else
    assert failed == f"hsicluster: failed: batch: {call['scenes'][-1]}: boom"
    assert all(line.startswith("hsicluster: warning: ") for line in warned), warned


# --------------------------------------------------------------------------------------------
# the command line


def test_cli_run_dry_run_and_errors(project: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    dry = runner.invoke(main, ["run", str(project), "--dry-run"])
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.strip() == f"5 of 5 steps would run (workdir {tmp_path / 'runs' / 'tiny'})"
    assert "train: would run: never ran" in dry.stderr
    assert not (tmp_path / "runs").exists()

    write_pipeline(project, tiny_steps(predict={"tile": 16}))
    bad = runner.invoke(main, ["run", str(project)])
    assert bad.exit_code == 2
    assert bad.stderr == f"hsicluster: error: {project}: steps[2].tile: unknown key; did you mean 'tiles'?\n"
    missing = runner.invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "no such pipeline file" in missing.stderr


def test_report_names_the_classes_the_ground_truth_names() -> None:
    from hsi_cluster.pipeline.report import to_markdown

    run_scores = {"acc": 0.9, "nmi": 0.8, "kappa": 0.85, "ari": 0.7, "n_scored": 30, "n_classes": 2,
                  "per_class": {"1": 0.8, "2": 1.0}, "class_counts": {"1": 20, "2": 10}, "labels": "labels.tif"}
    section = {"title": "Scene", "step": "evaluate", "truth": "gt.hdr", "runs": [
        {**run_scores, "seed": None, "class_names": {"1": "Corn notill", "2": "Grass|pasture"}}]}
    report = {"title": "t", "file": "p.yaml", "workdir": "w", "library_version": "0", "generated": "now",
              "evaluations": [section], "batches": [], "steps": []}
    text = to_markdown(report)
    assert "| 1 Corn notill | 20 | 0.800 |" in text and "| 2 Grass\\|pasture | 10 | 1.000 |" in text
    del section["runs"][0]["class_names"]  # scores written before class names were kept
    assert "| 1 | 20 | 0.800 |" in to_markdown(report)


def test_evaluate_step_reads_unlabelled_from_the_truth_nodata_as_the_command_does(project: Path,
                                                                                   tmp_path: Path) -> None:
    """A ground truth declaring nodata 255 scores its class 0 (as ``hsicluster evaluate`` does), unless told."""
    truth = truth_map().astype(np.uint8)
    truth[:5] = 255  # unlabelled rows; class 0 (the band of columns 0–2) is a class here
    helpers.write_geotiff(tmp_path / "data" / "truth.tif", truth[None], nodata=255)
    pipeline = write_pipeline(project, tiny_steps(evaluate={"truth": "../data/truth.tif"}))
    assert run(pipeline).failures == []
    workdir = tmp_path / "runs" / "tiny"
    written = json.loads((workdir / "scores.json").read_text())
    assert written["unlabelled"] == 255 and written["scores"]["n_scored"] == int((truth != 255).sum())
    cli = CliRunner().invoke(main, ["evaluate", str(workdir / "labels.tif"), str(tmp_path / "data" / "truth.tif"),
                                    "--json"])
    assert cli.exit_code == 0, cli.stderr
    assert json.loads(cli.stdout)["acc"] == written["scores"]["acc"]
    assert json.loads((workdir / "report.json").read_text())["evaluations"][0]["kmeans"][0]["n_scored"] == \
        written["scores"]["n_scored"]

    write_pipeline(project, tiny_steps(evaluate={"truth": "../data/truth.tif", "unlabelled": 0}))
    run(pipeline)
    assert json.loads((workdir / "scores.json").read_text())["scores"]["n_scored"] == int(
        ((truth != 255) & (truth != 0)).sum())

    # classes from 0 over every pixel, no nodata: "none" scores them all (as `hsicluster evaluate --unlabelled none`)
    helpers.write_geotiff(tmp_path / "data" / "whole.tif", truth_map().astype(np.uint8)[None])
    write_pipeline(project, tiny_steps(evaluate={"truth": "../data/whole.tif", "unlabelled": "none"}))
    run(pipeline)
    written = json.loads((workdir / "scores.json").read_text())
    assert written["unlabelled"] is None and written["scores"]["n_scored"] == truth.size
    write_pipeline(project, tiny_steps(evaluate={"truth": "../data/whole.tif", "unlabelled": "zero"}))
    with pytest.raises(PipelineError, match="an integer, or 'none' to score every pixel"):
        run(pipeline)


def test_evaluate_step_warns_of_a_value_that_looks_unlabelled_as_the_command_does(project: Path,
                                                                                    tmp_path: Path) -> None:
    """A ground truth without nodata that holds 255 beside 0: ``hsicluster evaluate`` warns that 255 is scored
    as a class; the pipeline's evaluate step did not."""
    truth = truth_map().astype(np.uint8)
    truth[:5] = 255
    helpers.write_geotiff(tmp_path / "data" / "truth.tif", truth[None])
    pipeline = write_pipeline(project, tiny_steps(evaluate={"truth": "../data/truth.tif"}))
    with pytest.warns(MetadataWarning, match=r"declares no nodata value, so 0 is taken as unlabelled .* but it "
                                             r"also holds 255"):
        assert run(pipeline).failures == []


def test_a_step_that_fails_is_named_and_reruns_saying_so(project: Path, tmp_path: Path) -> None:
    """A step failing on its input (a scene of other bands than the model's): the error names the step and says
    the later steps did not run; the finished steps stay done, and the failed one reruns 'failed last time'."""
    other = structured_cube(12, HEIGHT, WIDTH, seed=3)[:10]
    helpers.write_geotiff(tmp_path / "data" / "other.tif", other, nodata=-9999.0)
    failing = write_pipeline(project, tiny_steps(predict={"scene": "../data/other.tif"}))
    with pytest.raises(HsiClusterError) as caught:
        run(failing)
    message = str(caught.value)
    assert message.startswith("step predict: ") and "has 10 bands but" in message
    assert message.endswith("; the steps after it did not run (fix it and run the pipeline again: finished steps "
                            "are skipped)")
    dry = run(failing, dry_run=True)
    assert dry.outcome("ingest").status == dry.outcome("train").status == "up to date"
    assert dry.outcome("predict").reason == "failed last time"
    cli = CliRunner().invoke(main, ["run", str(failing)])
    assert cli.exit_code == 2 and cli.stderr.splitlines()[-1].startswith("hsicluster: error: step predict: ")
    fixed = run(write_pipeline(project, tiny_steps()))
    assert fixed.ran == ["predict", "evaluate", "report"] and fixed.skipped == ["ingest", "train"]


def test_a_batch_step_whose_labels_were_deleted_runs_again(tmp_path: Path) -> None:
    """A label raster deleted from a batch step's OUTDIR left the step "up to date" on every run (its output is
    the manifest, which had not changed): the missing labels are a reason to run it."""
    from hsi_cluster.pipeline.runner import _missing_labels

    outdir = tmp_path / "labels"
    outdir.mkdir()
    kept, gone = outdir / "a_labels.tif", outdir / "b_labels.tif"
    kept.write_bytes(b"x")
    manifest = outdir / "manifest.json"
    manifest.write_text(json.dumps({"scenes": {
        "/archive/a.tif": {"status": "done", "output": str(kept)},
        "/archive/b.tif": {"status": "skipped", "output": str(gone)},
        "/archive/c.tif": {"status": "failed", "output": str(outdir / "c_labels.tif")}}}))
    assert _missing_labels(manifest) == "1 label raster it wrote is missing (b_labels.tif)"
    gone.write_bytes(b"x")
    assert _missing_labels(manifest) is None
    manifest.write_text("{not json")
    assert _missing_labels(manifest) is None  # the manifest's own fingerprint decides


def test_a_job_rerun_within_the_second_of_its_last_run_changes_what_the_report_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report reruns when another step ran, read from when and how long it ran: a predict job rerun within the
    second of its last run, lasting as long to the ms, left the report "up to date" (a fresh clone's suite failed so
    once). The time to the ns is read too."""
    import datetime as dt
    import time
    from types import SimpleNamespace

    from hsi_cluster.pipeline.state import State

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls(2026, 12, 7, 8, 0, 0, tzinfo=tz)

    monkeypatch.setattr("hsi_cluster.pipeline.state.dt", SimpleNamespace(datetime=Frozen, timezone=dt.timezone))
    state = State.load(tmp_path)
    state.record("predict", "predict", "seed1", params={}, inputs={}, outputs={}, seconds=0.3)
    before = (state.finished("predict"), state.seconds("predict"), state.last_run("predict"))
    time.sleep(0.001)
    state.record("predict", "predict", "seed1", params={}, inputs={}, outputs={}, seconds=0.3)
    after = (state.finished("predict"), state.seconds("predict"), state.last_run("predict"))
    assert before[:2] == after[:2] and before != after


def test_a_predict_step_tells_what_predict_warns_of_the_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scene 1.5× as bright as the training scene: the predict step logs the warning ``hsicluster predict`` prints
    (it was silent), and with ``match_brightness: true`` the line that says at which gain it labelled."""
    write_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with rasterio.open(tmp_path / "data" / "scene.tif") as src:
        profile, values = src.profile, src.read()
    with rasterio.open(tmp_path / "data" / "bright.tif", "w", **profile) as dst:
        dst.write(np.where(values == profile["nodata"], values, values * 1.5).astype(values.dtype))
    steps = tiny_steps(predict={"scene": "../data/bright.tif"})[:3]
    path = write_pipeline(tmp_path / "pipes" / "tiny.yaml", steps)
    lines: list[str] = []
    run(path, log=lines.append)
    assert any(line.startswith("    warning: ") and "label it at that brightness with --match-brightness" in line
               for line in lines), lines
    write_pipeline(path, tiny_steps(predict={"scene": "../data/bright.tif", "match_brightness": True})[:3])
    lines.clear()
    run(path, log=lines.append)
    assert any(line.startswith("    warning: ") and "× its values (--match-brightness)" in line for line in lines), lines
