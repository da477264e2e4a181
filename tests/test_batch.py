"""``batch``: many scenes, one model, on dask.distributed — for real (worker processes on loopback).

A tiny model is trained once on the bundled Salinas-A scene (204 bands). The batch holds synthetic
204-band GeoTIFFs made from its spectra (EPSG:32633), the real Salinas-A scene, a truncated GeoTIFF
and, when ../shared/data is present, Indian Pines (200 bands: a band mismatch). Every finished
output must equal a single-scene ``predict`` of the same scene.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from hsi_cluster.batch import (
    ATTEMPTS_DIR,
    LOCK_FILE,
    Manifest,
    _dashboard,
    _source_fields,
    attempt_stem,
    label_scene,
    output_paths,
    run_batch,
)
from hsi_cluster.cli import EXIT_SOME_FAILED, main
from hsi_cluster.errors import HsiClusterError, OutputError, SceneError
from hsi_cluster.io import open_scene
from hsi_cluster.io.files import sha256_of
from hsi_cluster.predict import predict_scene
from tests import helpers
from tests.io.test_enmap import write_product
from tests.predict_helpers import read_raster, train_tiny

TILES = 32


# ------------------------------------------------------------------------------------------------
# Scene lists and output names (no cluster).


def test_output_paths_keep_folders_apart(tmp_path: Path) -> None:
    sources = [tmp_path / "x" / "scene.tif", tmp_path / "y" / "scene.tif", tmp_path / "x" / "other.hdr"]
    targets = output_paths(sources, tmp_path / "out")
    assert targets[sources[0]] == tmp_path / "out" / "x" / "scene_labels.tif"
    assert targets[sources[1]] == tmp_path / "out" / "y" / "scene_labels.tif"
    assert targets[sources[2]] == tmp_path / "out" / "x" / "other_labels.tif"
    with pytest.raises(HsiClusterError, match="would both write"):
        output_paths([tmp_path / "s.tif", tmp_path / "s.img"], tmp_path / "out")


def test_output_names_keep_every_dot_but_the_extensions(tmp_path: Path) -> None:
    """Dotted archive names (HLS, Sentinel) were cut at the first dot: two tiles of one folder collided."""
    sources = [tmp_path / "HLS.S30.T33UVP.2024001.v2.0.tif", tmp_path / "HLS.S30.T33UVQ.2024001.v2.0.tif"]
    targets = output_paths(sources, tmp_path / "out")
    assert [t.name for t in targets.values()] == ["HLS.S30.T33UVP.2024001.v2.0_labels.tif",
                                                  "HLS.S30.T33UVQ.2024001.v2.0_labels.tif"]


def test_output_paths_never_name_a_scene(tmp_path: Path) -> None:
    # labels of an earlier run written beside the scenes, now matched by the glob too
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "sub").mkdir()
    for outdir in (tmp_path, tmp_path / "link", tmp_path / "sub" / ".."):  # also through a link or '..'
        with pytest.raises(HsiClusterError, match="s_labels.tif: is a scene and would also be the labels of"):
            output_paths([tmp_path / "s.tif", tmp_path / "s_labels.tif"], outdir)


def test_a_scene_is_current_until_one_of_its_files_changes(tmp_path: Path) -> None:
    """A record skips its scene while the scene, its ENVI header and its EnMAP METADATA.XML are unchanged; the record
    of a lone file written by versions that watched the scene's own file alone still skips it."""
    lone = helpers.write_geotiff(tmp_path / "lone.tif", helpers.synthetic_cube(3, 8, 8)).path
    envi = helpers.write_envi(tmp_path / "envi.img", helpers.synthetic_cube(3, 8, 8))
    product = write_product(tmp_path / "product")
    output = tmp_path / "labels.tif"
    output.write_bytes(b"labels")
    sidecar = tmp_path / "labels.tif.aux.xml"
    sidecar.write_text("<PAMDataset/>")
    manifest = Manifest(tmp_path / "manifest.json", {})
    manifest.records[str(lone)] = {"source": str(lone), "output": str(output), "status": "done",
                                   "sha256": sha256_of(output), "source_mtime_ns": lone.stat().st_mtime_ns}
    assert manifest.is_current(lone, output)  # a manifest of the previous version: no spurious relabelling
    # --match-brightness: such a record does not say whether the scene fits at another gain, so it is labelled
    # again once; a record that says, only when the option changes what it holds
    assert not manifest.is_current(lone, output, match_brightness=True)
    record = manifest.records[str(lone)]
    record.update(another_acquisition=False, applied_gain=1.0, applied_tilt=0.0)
    assert manifest.is_current(lone, output, match_brightness=True) and manifest.is_current(lone, output)
    record.update(another_acquisition=True)
    assert not manifest.is_current(lone, output, match_brightness=True) and manifest.is_current(lone, output)
    record.update(applied_tilt=-0.1)
    assert manifest.is_current(lone, output, match_brightness=True) and not manifest.is_current(lone, output)
    record.update(another_acquisition=False, applied_tilt=0.0)
    sidecar.unlink()  # the class names and attribute table beside the labels: a rerun writes them again
    assert not manifest.is_current(lone, output)
    sidecar.write_text("<PAMDataset/>")
    for source, companion in [(envi.path, envi.header), (product.image, product.xml)]:
        manifest.records[str(source)] = {"source": str(source), "output": str(output), "status": "done",
                                         "sha256": sha256_of(output), **_source_fields(source)}
        assert manifest.is_current(source, output), source
        helpers.edit_file(companion)
        assert not manifest.is_current(source, output), f"{companion} was edited: {source} is labelled again"


# ------------------------------------------------------------------------------------------------
# Real batches.


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, sample_salinas_a: Path) -> dict:
    """A tiny model and an 'archive': 4 synthetic scenes + real Salinas-A + a corrupt file (+ Indian Pines)."""
    root = tmp_path_factory.mktemp("archive")
    model = train_tiny(sample_salinas_a, root / "model.ckpt", root / "work", n_clusters=4, steps=8)
    spectra = np.asarray(open_scene(sample_salinas_a).values, dtype=np.float32)  # (204, 83, 86)
    scenes = root / "scenes"
    (scenes / "north").mkdir(parents=True)
    (scenes / "south").mkdir()
    good = []
    for index, (height, width) in enumerate([(70, 90), (41, 64), (83, 86), (50, 33)]):
        cube = np.flip(spectra, axis=1 + index % 2)[:, :height, :width]
        cube = np.concatenate([cube, cube[:, ::-1]], axis=1)[:, :height] if height > cube.shape[1] else cube
        folder = scenes / ("north" if index < 2 else "south")
        good.append(helpers.write_geotiff(folder / f"scene{index}.tif", np.ascontiguousarray(cube), tiled=True,
                                          blocksize=32).path)
    shutil.copy(sample_salinas_a, scenes / "south" / "salinas_a.img")
    shutil.copy(sample_salinas_a.with_suffix(".hdr"), scenes / "south" / "salinas_a.hdr")
    good.append(scenes / "south" / "salinas_a.img")
    corrupt = scenes / "north" / "corrupt.tif"
    corrupt.write_bytes(good[0].read_bytes()[:5000])
    return {"model": model.checkpoint, "scenes": scenes, "good": good, "corrupt": corrupt, "root": root}


def test_names_too_long_and_a_full_disk_are_one_line_each(archive: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A scene whose labels' name the file system cannot hold stopped the whole batch as an unexpected OSError
    (exit 1, before any work); ``predict -o`` of such a name too. A full disk while a worker labels a scene came back
    as dask's traceback and a raw OSError: now a failed record with the one-line cause, not retried."""
    long_scene = tmp_path / "scenes" / ("s" * 245 + ".tif")
    long_scene.parent.mkdir()
    shutil.copy(archive["good"][1], long_scene)
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["batch", str(long_scene), str(archive["good"][1]), "-m", str(archive["model"]),
                                    "-o", str(out), "-q"])
    assert run.exit_code == 2 and "unexpected" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "the name of the labels of ssss" in lines[0] and lines[0].endswith(
        "rename the scene"), lines
    run = CliRunner().invoke(main, ["predict", str(archive["good"][1]), "-m", str(archive["model"]), "-o",
                                    str(tmp_path / ("x" * 248 + ".tif")), "-q"])
    assert run.exit_code == 2 and run.stderr.count("\n") == 1 and "the name of the output is 252 bytes long" in run.stderr
    assert not list(tmp_path.glob("x*"))

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(out / "a.tif.partial.zarr" / "c"))

    monkeypatch.setattr("hsi_cluster.predict.predict_scene", full_disk)
    record = label_scene(str(archive["good"][1]), str(archive["model"]), str(out / "a.tif"), 16, str(tmp_path / "at"))
    assert record["status"] == "failed" and record["error"] == (
        f"no space left on the device (writing {out / 'a.tif.partial.zarr' / 'c'}); free some space, then rerun the "
        "batch")


def test_a_second_batch_on_the_same_outdir_is_refused(archive: dict, tmp_path: Path) -> None:
    """Two batches writing one OUTDIR at once both resumed the same partial outputs and recorded each other's
    half-written files as done (a tile of nodata, a whole map of nodata); the second is now refused."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match=r"another hsicluster batch is writing to this folder \(pid 4242\); "
                                              r"wait for it to finish, or choose another OUTDIR"):
            run_batch([str(archive["good"][0])], archive["model"], out)
    assert not (out / "manifest.json").exists()


def test_labels_of_another_scene_in_the_outdir_are_not_written_over(archive: dict, tmp_path: Path) -> None:
    """Two runs with other globs into one OUTDIR (north/scene.tif, then south/scene.tif) wrote the same
    OUTDIR/scene_labels.tif in turn; the second is now refused, naming the scene whose labels are there."""
    from hsi_cluster.checkpoint import load_checkpoint

    north, south = tmp_path / "north" / "scene.tif", tmp_path / "south" / "scene.tif"
    for path in (north, south):
        path.parent.mkdir()
        shutil.copy(archive["good"][0], path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scene_labels.tif").write_bytes(b"labels of north")
    manifest = {"model_sha256": load_checkpoint(archive["model"]).sha256(), "tiles": TILES,
                "scenes": {str(north): {"source": str(north), "output": str(out / "scene_labels.tif"),
                                        "status": "done"}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match=r"scene_labels.tif: holds the labels of .*north/scene.tif \(see "
                                          r"manifest.json\), and this run would write those of .*south/scene.tif"):
        run_batch([str(south)], archive["model"], out, tiles=TILES)
    assert (out / "scene_labels.tif").read_bytes() == b"labels of north"


@pytest.mark.parametrize("other", ["model", "tiles"])
def test_labels_of_another_model_are_not_left_beside_this_ones(archive: dict, tmp_path: Path, other: str) -> None:
    """OUTDIR labelled with one model, then one of its scenes with another model (or --tiles): the manifest
    forgot the other scenes, whose labels of the first model stayed in the folder, unlisted, with exit 0. Refused
    now, naming them; the manifest is left as it was."""
    from hsi_cluster.checkpoint import load_checkpoint

    first, second = archive["good"][:2]
    out = tmp_path / "out"
    out.mkdir()
    (out / "scene1_labels.tif").write_bytes(b"labels of the first model")
    sha = load_checkpoint(archive["model"]).sha256()
    manifest = {"model": "old.ckpt", "model_sha256": "f" * 64 if other == "model" else sha,
                "tiles": TILES if other == "model" else TILES * 2,
                "scenes": {str(second): {"source": str(second), "output": str(out / "scene1_labels.tif"),
                                         "status": "done"}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    made_with = r"the model old.ckpt \(sha256 ffffffffffff…\)" if other == "model" else f"--tiles {TILES * 2}"
    with pytest.raises(OutputError, match=rf"out: holds the labels of 1 scene made with {made_with} \(scene1.tif\), "
                                          r"which this run does not label again: .* Pass all its scenes, or choose "
                                          r"another OUTDIR"):
        run_batch([str(first)], archive["model"], out, tiles=TILES)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    if other == "model":  # a pipeline's batch step, whose model changed: those labels are removed, and said so
        said: list[str] = []
        began: list[tuple[int, int]] = []  # once the cluster is up: the rate of the ETA counts from there
        result = run_batch([str(first)], archive["model"], out, tiles=TILES, log=said.append, remove_other_models=True,
                           on_start=lambda done, total: began.append((done, total)))
        assert [record["status"] for record in result.records] == ["done"] and began == [(0, 1)]
        assert not (out / "scene1_labels.tif").exists()
        assert "removed the labels of 1 scene made with the model old.ckpt (sha256 ffffffffffff…) (scene1.tif)" in said[0]
        assert list(json.loads((out / "manifest.json").read_text())["scenes"]) == [str(first)]


def test_a_project_moved_whole_labels_its_scenes_again_where_they_are(archive: dict, tmp_path: Path) -> None:
    """A project folder (scenes and OUTDIR) moved elsewhere: after a scene changed, every run failed with "holds the
    labels of /old/project/scene.tif … choose another OUTDIR" (a pipeline's batch step, --force too). The manifest's
    scenes move with it."""
    project = tmp_path / "project"
    (project / "archive").mkdir(parents=True)
    scenes = [Path(shutil.copy(source, project / "archive")) for source in archive["good"][:2]]
    run_batch([str(project / "archive" / "*.tif")], archive["model"], project / "labels", tiles=TILES)
    moved = tmp_path / "elsewhere" / "project2"
    moved.parent.mkdir()
    shutil.move(project, moved)
    changed = moved / "archive" / scenes[1].name
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))  # edited since
    again = run_batch([str(moved / "archive" / "*.tif")], archive["model"], moved / "labels", tiles=TILES)
    assert [record["status"] for record in again.records] == ["skipped", "done"], again.records
    assert sorted(json.loads((moved / "labels" / "manifest.json").read_text())["scenes"]) == \
        [str(moved / "archive" / scene.name) for scene in scenes]
    changed.unlink()  # a scene deleted from the archive: its labels stay, and that is said (it was not)
    said: list[str] = []
    run_batch([str(moved / "archive" / "*.tif")], archive["model"], moved / "labels", tiles=TILES, log=said.append)
    assert f"warning: 1 label raster in {moved / 'labels'} ({changed.stem}_labels.tif) is of scenes no longer on " \
        "disk; delete them if they should go" in said, said


def test_a_moved_outdir_is_up_to_date_and_an_unreadable_manifest_is_kept(archive: dict, tmp_path: Path) -> None:
    """A batch's OUTDIR moved elsewhere: the rerun skipped its scenes but its manifest still named the outputs in
    the old folder (and a copy said they had been 'labelled before into other paths'). A manifest that cannot be
    read was dropped in silence, every scene labelled again."""
    scene = archive["good"][1]
    first = tmp_path / "first"
    run_batch([str(scene)], archive["model"], first, tiles=TILES)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    said: list[str] = []
    again = run_batch([str(scene)], archive["model"], moved, tiles=TILES, log=said.append)
    assert [record["status"] for record in again.records] == ["skipped"], again.records
    [record] = json.loads((moved / "manifest.json").read_text())["scenes"].values()
    assert record["output"] == str(moved / "scene1_labels.tif") and not any("other paths" in m for m in said), said
    (moved / "manifest.json").write_text('{"scenes": {"half')
    said.clear()
    relabelled = run_batch([str(scene)], archive["model"], moved, tiles=TILES, log=said.append)
    assert [record["status"] for record in relabelled.records] == ["done"]
    assert (moved / "manifest.json.bak").read_text() == '{"scenes": {"half'
    assert any(m.startswith(f"warning: {moved / 'manifest.json'}: unreadable (") and "kept as manifest.json.bak" in m
               for m in said), said


def test_a_file_batch_did_not_write_is_not_written_over(archive: dict, tmp_path: Path) -> None:
    """batch has no --overwrite: a file of the user's, or another scene's labels from `predict`, where a scene's labels
    go was replaced in silence when the manifest did not record it; the scene's own labels from `predict` are
    relabelled."""
    scene, other = archive["good"][1], archive["good"][3]
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"{scene.stem}_labels.tif"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match=rf"{target.name}: is a file this batch did not write, and this run would "
                                          rf"write the labels of .*{scene.name} over it; move it away or choose another "
                                          "OUTDIR"):
        run_batch([str(scene)], archive["model"], out, tiles=TILES)
    assert target.read_bytes() == b"precious"
    predict_scene(other, archive["model"], target, tiles=TILES, device="cpu", overwrite=True)
    before = target.read_bytes()
    with pytest.raises(OutputError, match=rf"{target.name}: holds the labels of .*{other.name}, and this run would"):
        run_batch([str(scene)], archive["model"], out, tiles=TILES)
    assert target.read_bytes() == before
    predict_scene(scene, archive["model"], target, tiles=TILES, device="cpu", overwrite=True)
    result = run_batch([str(scene)], archive["model"], out, tiles=TILES, workers=1)
    assert [record["status"] for record in result.records] == ["done"]


def test_a_rerun_without_stac_removes_the_stac_files_of_the_labels_it_replaced(archive: dict, tmp_path: Path) -> None:
    """The Items and Collection of an earlier --stac run named the old model and class counts beside new labels."""
    out = tmp_path / "out"
    scenes = [str(archive["good"][1]), str(archive["good"][3])]
    args = ["batch", *scenes, "-m", str(archive["model"]), "-o", str(out), "--tiles", str(TILES), "--workers", "1",
            "-q"]
    assert CliRunner().invoke(main, [*args, "--stac"]).exit_code == 0
    items = sorted(out.rglob("*.stac.json"))
    assert len(items) == 2 and (out / "collection.json").is_file()
    skipped = CliRunner().invoke(main, args)  # nothing relabelled: the catalogue still describes the labels
    assert skipped.exit_code == 0 and skipped.stderr == "" and (out / "collection.json").is_file()
    (out / "manifest.json").unlink()  # as after another model: every scene is labelled again
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ("hsicluster: warning: removed 3 STAC files of an earlier --stac run "
                             f"({items[0].name}, …) that described labels this run replaced; pass --stac to write new "
                             "ones\n")
    assert not any(path.exists() for path in items) and not (out / "collection.json").exists()


def test_rasters_that_hsicluster_wrote_are_not_scenes(tmp_path: Path) -> None:
    """OUTDIR inside the globbed tree (-o archive/labels with 'archive/**/*.tif'): a batch rerun took its own labels
    for scenes and was refused, and ``train`` on the same glob failed on them ("has a single band"). They are left
    out, globbed here or by the shell, and only they."""
    from hsi_cluster.io.paths import expand_scene_paths

    out = tmp_path / "archive" / "labels"
    out.mkdir(parents=True)
    scene = helpers.write_geotiff(tmp_path / "archive" / "a.tif", helpers.synthetic_cube(3, 8, 8)).path
    ours = helpers.write_geotiff(out / "a_labels.tif", helpers.synthetic_cube(1, 8, 8, "uint8")).path
    with rasterio.open(ours, "r+") as dataset:
        dataset.update_tags(HSICLUSTER_K="4")
    named_alike = helpers.write_geotiff(out / "b_labels.tif", helpers.synthetic_cube(3, 8, 8)).path  # a scene
    told: list[str] = []
    assert expand_scene_paths([str(tmp_path / "archive" / "**" / "*.tif")], log=told.append) == [scene, named_alike]
    assert expand_scene_paths([scene, ours, named_alike]) == [scene, named_alike]  # the shell expanded the glob
    assert told == ["left out 1 raster that hsicluster wrote (cluster labels, confidence), not scenes"]
    with pytest.raises(SceneError, match=r"labels/a_\*.tif: the pattern matches only rasters that hsicluster wrote "
                                         r"\(labels, confidence\)"):
        expand_scene_paths([str(out / "a_*.tif")])
    # named alone (``hsicluster train labels.tif`` by mistake): said so, not "no scene to train on"
    with pytest.raises(SceneError, match=r"a_labels.tif: a raster that hsicluster wrote \(cluster labels or "
                                         r"confidence\), not a scene; pass the hyperspectral scene itself"):
        expand_scene_paths([ours])


def reference_labels(archive: dict, source: Path, tmp: Path) -> np.ndarray:
    """Labels of ``source`` by a single-scene predict (cached per scene)."""
    cache = archive["root"] / "reference" / f"{source.parent.name}_{source.stem}.tif"
    if not cache.exists():
        cache.parent.mkdir(exist_ok=True)
        predict_scene(source, archive["model"], cache, tiles=TILES)
    return read_raster(cache)[0]


def assert_same_labels(labels: np.ndarray, reference: np.ndarray, name: str) -> None:
    """Equal labels, up to float near-ties: at most one pixel in a thousand may differ.

    Workers run torch single-threaded, so where two clusters' probabilities tie to rounding a
    pixel may go the other way than in this process; a wrong tile, model or offset changes far more.
    """
    assert labels.shape == reference.shape, f"{name}: shape {labels.shape} != {reference.shape}"
    differing = int((labels != reference).sum())
    assert differing <= labels.size // 1000, f"{name}: {differing} of {labels.size} labels differ"


def assert_outputs_match_predict(archive: dict, result_records: list[dict], tmp: Path) -> None:
    for record in result_records:
        if record["status"] not in ("done", "skipped"):
            continue
        labels, meta = read_raster(Path(record["output"]))
        assert_same_labels(labels, reference_labels(archive, Path(record["source"]), tmp), record["source"])
        assert record["sha256"] == sha256_of(Path(record["output"]))
        if record["status"] == "done":  # the training-range check ran on the worker
            assert record["outside_share"] is not None and 0 <= record["outside_share"] <= 1, record


def test_batch_on_a_local_cluster_isolates_a_corrupt_scene(archive: dict, tmp_path: Path,
                                                           shared_data_optional: Path | None) -> None:
    patterns = [str(archive["scenes"] / "**" / "*.tif"), str(archive["scenes"] / "south" / "*.img")]
    if shared_data_optional is not None:  # a real scene of 200 bands: the model has 204
        patterns.append(str(shared_data_optional / "indian_pines" / "Indian_pines_corrected.npy"))
    out = tmp_path / "out"
    result = run_batch(patterns, archive["model"], out, tiles=TILES, workers=2, retries=1)
    assert result.workers == 2
    by_source = {Path(r["source"]).name: r for r in result.records}
    assert len(result.records) == len(archive["good"]) + 1 + (shared_data_optional is not None)
    assert by_source["corrupt.tif"]["status"] == "failed"
    assert "corrupt.tif" in by_source["corrupt.tif"]["error"]
    if shared_data_optional is not None:
        assert by_source["Indian_pines_corrected.npy"]["status"] == "failed"
        assert "band" in by_source["Indian_pines_corrected.npy"]["error"]
    assert {r["status"] for r in result.done} == {"done"} and len(result.done) == len(archive["good"])
    assert_outputs_match_predict(archive, result.records, tmp_path)
    # Outputs mirror the scenes' folders below their common parent (so equal names cannot collide).
    assert by_source["scene0.tif"]["output"].endswith("/north/scene0_labels.tif")
    assert by_source["salinas_a.img"]["output"].endswith("/south/salinas_a_labels.tif")
    assert all(Path(r["output"]).is_relative_to(out) for r in result.records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scenes"][str(archive["corrupt"])]["status"] == "failed"
    assert all(r["attempts"] == 1 for r in result.done)
    assert not (out / ATTEMPTS_DIR).exists(), "the attempt markers stay after they are counted"

    # Rerun: finished scenes are skipped (files untouched), the failed one is tried again.
    before = {r["output"]: os.stat(r["output"]).st_mtime_ns for r in result.done}
    again = run_batch(patterns, archive["model"], out, tiles=TILES, workers=1)
    assert {Path(r["source"]).name for r in again.skipped} == {p.name for p in archive["good"]}
    assert {r["output"]: os.stat(r["output"]).st_mtime_ns for r in again.skipped} == before
    assert len(again.failed) == len(result.failed)

    # A changed output is not trusted: that scene is redone.
    victim = Path(result.done[0]["output"])
    victim.write_bytes(b"tampered")
    third = run_batch(patterns, archive["model"], out, tiles=TILES, workers=1)
    assert [r["output"] for r in third.done] == [str(victim)]
    assert_outputs_match_predict(archive, third.records, tmp_path)


def test_editing_an_envi_header_labels_the_scene_again(archive: dict, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("salinas_a.img", "salinas_a.hdr"):
        shutil.copy(archive["scenes"] / "south" / name, scenes / name)
    scene, out = scenes / "salinas_a.img", tmp_path / "out"
    first = run_batch([scene], archive["model"], out, tiles=TILES, workers=1)
    assert [r["status"] for r in first.records] == ["done"]
    assert run_batch([scene], archive["model"], out, tiles=TILES, workers=1).records[0]["status"] == "skipped"
    helpers.edit_file(scene.with_suffix(".hdr"))
    again = run_batch([scene], archive["model"], out, tiles=TILES, workers=1)
    assert [r["status"] for r in again.records] == ["done"]
    assert run_batch([scene], archive["model"], out, tiles=TILES, workers=1).records[0]["status"] == "skipped"


def test_batch_cli_exit_code_and_summary(archive: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["batch", str(archive["good"][1]), str(archive["good"][3]), "-m",
                                str(archive["model"]), "-o", str(tmp_path / "ok"), "--tiles", str(TILES),
                                "--workers", "1", "-q", "--json"])
    assert good.exit_code == 0, good.output
    records = json.loads(good.stdout)
    assert [r["status"] for r in records] == ["done", "done"]
    corrupt = str(archive["corrupt"].absolute())
    for extra in (["-q"], ["--json"]):  # without -q: notices and the summary go to stderr, the JSON alone to stdout
        bad = runner.invoke(main, ["batch", str(archive["corrupt"]), str(archive["good"][1]), "-m",
                                   str(archive["model"]), "-o", str(tmp_path / "ok"), "--tiles", str(TILES),
                                   "--workers", "1", *extra])
        assert bad.exit_code == EXIT_SOME_FAILED
        failures = [line for line in bad.stderr.splitlines() if "failed:" in line]
        assert len(failures) == 1 and failures[0].startswith(f"hsicluster: failed: {corrupt}: ")  # once
        assert failures[0].count(corrupt) == 1  # the path once, not repeated by the error
        if extra == ["--json"]:
            records = json.loads(bad.stdout)
            assert [r["status"] for r in records] == ["failed", "skipped"]
            assert "1 of 2 scenes are up to date" in bad.stderr and "1 failed" in bad.stderr
        else:
            assert bad.stdout == ""
    # a scene that fails every time is left out with --exclude (the batch then exits 0), and said so
    excluded = runner.invoke(main, ["batch", str(archive["scenes"] / "north" / "*.tif"), "-m", str(archive["model"]),
                                    "-o", str(tmp_path / "ok"), "--tiles", str(TILES), "--workers", "1", "--exclude",
                                    str(archive["scenes"] / "*" / "corrupt*.tif"), "--json"])
    assert excluded.exit_code == 0, excluded.output
    assert [Path(r["source"]).name for r in json.loads(excluded.stdout)] == ["scene0.tif", "scene1.tif"]
    assert "left out 1 scene matching --exclude" in excluded.stderr
    assert "already matched" not in excluded.stderr  # the excluded scene was counted as a file named twice
    everything = runner.invoke(main, ["batch", str(archive["corrupt"]), "-m", str(archive["model"]), "-o",
                                      str(tmp_path / "ok"), "--exclude", str(archive["corrupt"]), "-q"])
    assert everything.exit_code == 2 and "every scene matched is excluded (1 by --exclude)" in everything.stderr
    missing = runner.invoke(main, ["batch", str(tmp_path / "none*.tif"), "-m", str(archive["model"]), "-o",
                                   str(tmp_path / "x"), "-q"])
    assert missing.exit_code == 2
    assert missing.stderr.count("\n") == 1 and "matches no scene" in missing.stderr
    bad_model = tmp_path / "bad.ckpt"
    bad_model.write_bytes(b"not a checkpoint")
    refused = runner.invoke(main, ["batch", str(archive["good"][1]), "-m", str(bad_model), "-o", str(tmp_path / "y"),
                                   "-q"])
    assert refused.exit_code == 2 and refused.stderr.startswith("hsicluster: error:")
    a_file = tmp_path / "afile"
    a_file.write_text("")
    not_a_folder = runner.invoke(main, ["batch", str(archive["good"][1]), "-m", str(archive["model"]), "-o",
                                        str(a_file), "-q"])
    assert not_a_folder.exit_code == 2 and f"{a_file}: is a file, not a folder" in not_a_folder.stderr
    assert not (tmp_path / "y").exists() or not any((tmp_path / "y").iterdir())


def test_batch_cli_warns_of_a_scene_with_no_valid_pixel(archive: dict, tmp_path: Path) -> None:
    """A tile of an archive that is all NaN is labelled (all nodata) and named in a warning and the summary; a
    warning of a scene's metadata read on a worker (bands it flags bad) reaches the user as one line too (it
    went to the worker's stderr as a raw Python warning)."""
    blank = helpers.write_geotiff(tmp_path / "blank.tif", np.full((204, 20, 30), np.nan, np.float32)).path
    cube = open_scene(archive["good"][3]).values
    flagged = helpers.write_geotiff(tmp_path / "flagged.tif", cube, good_band=[i not in (5, 6) for i in range(204)]).path
    result = CliRunner().invoke(main, ["batch", str(blank), str(flagged), "-m", str(archive["model"]),
                                       "-o", str(tmp_path / "out"), "--tiles", str(TILES), "--workers", "1"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, warnings
    assert str(blank.absolute()) in warnings[0] and "every pixel is nodata" in warnings[0]
    assert warnings[1].startswith(f"hsicluster: warning: {flagged.absolute()}: flags 2 bands bad (band 6, band 7)")
    assert "2 done (1 with no valid pixel), 0 skipped, 0 failed" in result.stdout
    # the manifest keeps every warning printed of a scene (the no-labelled-pixel one was printed only)
    records = json.loads((tmp_path / "out" / "manifest.json").read_text())["scenes"]
    kept = {Path(record["source"]).name: record["warnings"] for record in records.values()}
    assert [warning.split(": ", 1)[1][:26] for warning in kept["blank.tif"]] == ["every pixel is nodata, NaN"]
    assert kept["flagged.tif"][0].startswith(f"{flagged.absolute()}: flags 2 bands bad (band 6, band 7)")
    labels, meta = read_raster(next((tmp_path / "out").rglob("blank_labels.tif")))
    assert (labels == meta["nodata"]).all()


# ------------------------------------------------------------------------------------------------
# A scheduler and workers started as separate processes on loopback.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dask_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0].replace("-", "_"), *args[1:]]


class LoopbackCluster:
    """``dask scheduler`` and ``n`` × ``dask worker --no-nanny`` as separate processes on 127.0.0.1."""

    def __init__(self, workers: int, log_dir: Path) -> None:
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.log_dir = log_dir
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = subprocess.Popen(_dask_command("scheduler", "--host", "127.0.0.1", "--port", port,
                                                        "--no-dashboard"),
                                          stdout=subprocess.DEVNULL, stderr=open(log_dir / "scheduler.log", "w"),
                                          env=env)
        self.workers = [subprocess.Popen(_dask_command("worker", self.address, "--nthreads", "1", "--no-nanny",
                                                       "--no-dashboard", "--name", f"w{i}"),
                                         stdout=subprocess.DEVNULL, stderr=open(log_dir / f"worker{i}.log", "w"),
                                         env=env)
                        for i in range(workers)]
        self._wait_for_workers(workers)

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        client = Client(self.address, timeout="60s")
        try:
            client.wait_for_workers(n, timeout=120)
        finally:
            client.close()

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_batch_against_a_separate_scheduler_survives_a_killed_worker(archive: dict, tmp_path: Path) -> None:
    cluster = LoopbackCluster(workers=2, log_dir=tmp_path)
    try:
        out = tmp_path / "out"
        killed: list[str] = []  # attempt stems of the scenes whose worker was killed

        sources = [str(p) for p in archive["good"]]
        outputs = {attempt_stem(str(o)): o for o in output_paths([Path(s) for s in sources], out).values()}
        pids = {proc.pid: proc for proc in cluster.workers}

        def kill_a_busy_worker() -> None:
            """SIGKILL the worker of a scene that has started (attempt marker) and not finished (no output)."""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for marker in (out / ATTEMPTS_DIR).glob("*.*") if (out / ATTEMPTS_DIR).is_dir() else []:
                    try:
                        pid = int(marker.read_text() or 0)
                    except (OSError, ValueError):
                        continue
                    if pid in pids and not outputs[marker.name.split(".")[0]].exists():
                        pids[pid].send_signal(signal.SIGKILL)
                        killed.append(marker.name.split(".")[0])
                        return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        result = run_batch(sources, archive["model"], out, tiles=TILES, scheduler=cluster.address, retries=2)
        killer.join()
        assert killed, "the worker was never killed: the test did not exercise a lost worker"
        assert [r["status"] for r in result.records] == ["done"] * len(sources)
        assert_outputs_match_predict(archive, result.records, tmp_path)
        lost = next(r for r in result.records if attempt_stem(r["output"]) == killed[0])
        assert lost["attempts"] >= 2  # the scene of the killed worker ran again on the other one
        assert lost["status"] == "done"
    finally:
        cluster.close()


def test_interrupted_client_resumes_without_redoing_finished_scenes(archive: dict, tmp_path: Path) -> None:
    # 16 scenes (copies of the synthetic ones) so that the batch is still running when interrupted.
    many = tmp_path / "many"
    many.mkdir()
    originals = {}
    for copy in range(4):
        for original in archive["good"][:4]:
            target = many / f"copy{copy}_{original.name}"
            shutil.copy(original, target)
            originals[str(target.absolute())] = original
    out = tmp_path / "out"
    command = helpers.python_module_command("batch", str(many / "*.tif"), "-m", str(archive["model"]),
                                            "-o", str(out), "--tiles", "16", "--workers", "1", "-q")
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN (so under `make test &` the Ctrl-C below was a no-op and the batch ran to the
    # end): the child takes Ctrl-C as a command typed in a terminal does.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=helpers.default_sigint, start_new_session=True)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 180
    done_before: dict[str, str] = {}
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                records = json.loads(manifest.read_text())["scenes"]
            except (FileNotFoundError, ValueError, KeyError):
                records = {}
            done_before = {s: r["sha256"] for s, r in records.items() if r["status"] == "done"}
            if done_before:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, once, to the whole process group as a terminal sends it
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert done_before, "the batch finished or stalled before it could be interrupted"
    records = json.loads(manifest.read_text())["scenes"]
    statuses = sorted(r["status"] for r in records.values())
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 130, f"exit {proc.returncode}, scenes {statuses}: {stderr}"
    # one line: the workers, which got the Ctrl-C too, printed their KeyboardInterrupt tracebacks before it
    assert stderr == "hsicluster: error: interrupted; rerun the same command to resume where it stopped\n", stderr
    assert any(r["status"] == "pending" for r in records.values()), "nothing was left to resume"
    mtimes = {s: os.stat(records[s]["output"]).st_mtime_ns for s in done_before}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    records = json.loads(manifest.read_text())["scenes"]
    assert len(records) == len(originals)
    assert all(records[s]["status"] == "skipped" for s in done_before)
    assert {s: os.stat(records[s]["output"]).st_mtime_ns for s in done_before} == mtimes
    assert all(r["status"] in ("done", "skipped") for r in records.values())
    for source, record in records.items():  # each copy labelled as its original is by a single predict
        assert_same_labels(read_raster(Path(record["output"]))[0], reference_labels(archive, originals[source], tmp_path),
                           source)


class _SchedulerWithDashboard:
    dashboard_link = "http://127.0.0.1:8787/status"

    def scheduler_info(self) -> dict[str, object]:
        return {"services": {"dashboard": 8787}}


@pytest.mark.parametrize(("bokeh", "local", "shown"), [(True, True, True), (False, True, False), (False, False, True)])
def test_dashboard_link_only_where_the_page_can_be_served(monkeypatch: pytest.MonkeyPatch, bokeh: bool,
                                                          local: bool, shown: bool) -> None:
    """Without bokeh a local scheduler's dashboard page only says bokeh is missing: no link then.
    A remote scheduler may have bokeh where this machine has not, so its link is shown."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if bokeh else None) if name == "bokeh" else real(name, *a))
    link = _dashboard(_SchedulerWithDashboard(), local=local)
    assert link == (_SchedulerWithDashboard.dashboard_link if shown else None)


def test_scenes_that_finish_while_ctrl_c_stops_the_batch_are_recorded(archive: dict, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenes whose task finished while the client was stopping were written but left `pending`, and the rerun
    labelled them again; they are recorded as done now (a dask client stood in for, so the timing is exact)."""
    import contextlib

    import distributed

    import hsi_cluster.batch as batch_module

    class Finished:
        status = "finished"

        def __init__(self, record: dict) -> None:
            self.record_ = record

        def result(self) -> dict:
            return self.record_

    class Client:
        def submit(self, function, source, checkpoint, output, *args, **kwargs) -> Finished:
            return Finished({"source": source, "output": output, "status": "done", "error": None, "sha256": "x"})

        def scheduler_info(self) -> dict:
            return {"workers": {}}

    def first_then_ctrl_c(futures):
        yield futures[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_module, "dask_client", lambda *a: contextlib.nullcontext((Client(), 1)))
    monkeypatch.setattr(distributed, "as_completed", first_then_ctrl_c)
    scenes = [str(scene) for scene in archive["good"][:3]]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(scenes, archive["model"], out, tiles=TILES)
    records = json.loads((out / "manifest.json").read_text())["scenes"]
    assert [records[str(Path(scene).absolute())]["status"] for scene in scenes] == ["done", "done", "done"]


def test_scenes_labelled_before_into_other_paths_are_named(archive: dict, tmp_path: Path) -> None:
    """Outputs mirror the folders under the scenes' common folder, so other patterns into one OUTDIR relabelled
    scenes into new paths in silence, the earlier outputs left beside them; the log now says so."""
    north, south = archive["good"][0], archive["good"][2]  # north/scene0.tif, south/scene2.tif
    out = tmp_path / "out"
    run_batch([str(north)], archive["model"], out, tiles=TILES, workers=1)
    assert (out / "scene0_labels.tif").is_file()
    said: list[str] = []
    result = run_batch([str(north), str(south)], archive["model"], out, tiles=TILES, workers=1, log=said.append)
    assert [record["status"] for record in result.records] == ["done", "done"]
    assert (out / "north" / "scene0_labels.tif").is_file() and (out / "scene0_labels.tif").is_file()
    assert [line for line in said if "labelled before" in line] == [
        f"1 of these scenes was labelled before into other paths under OUTDIR (scene0.tif: {out / 'scene0_labels.tif'}, "
        f"now {out / 'north' / 'scene0_labels.tif'}), as other patterns had another common folder; they are labelled "
        "again there and the earlier outputs are left as they are"]


def test_match_brightness_labels_only_the_scenes_at_another_brightness_again(archive: dict, tmp_path: Path) -> None:
    """``batch --match-brightness`` labels a scene 1.5× as bright as the training scene at the gain that fits, as
    ``predict --match-brightness`` does; a rerun that turns the option on or off labels that scene again and skips
    the one that fits as delivered."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    plain = scenes / "plain.tif"
    shutil.copy(archive["good"][0], plain)
    values = np.asarray(open_scene(plain).values, dtype=np.float32)
    bright = helpers.write_geotiff(scenes / "bright.tif", values * np.float32(1.5)).path
    out = tmp_path / "out"
    first = {Path(r["source"]).name: r for r in run_batch([plain, bright], archive["model"], out, tiles=TILES,
                                                          workers=1).records}
    assert first["bright.tif"]["another_acquisition"] and first["bright.tif"]["applied_gain"] == 1.0
    assert any("label it at that brightness with --match-brightness" in w for w in first["bright.tif"]["warnings"])
    assert not first["plain.tif"]["another_acquisition"]
    run = CliRunner().invoke(main, ["batch", str(plain), str(bright), "-m", str(archive["model"]), "-o", str(out),
                                    "--tiles", str(TILES), "--workers", "1", "--match-brightness", "--json", "-q"])
    assert run.exit_code == 0, run.output
    matched = {Path(r["source"]).name: r for r in json.loads(run.stdout)}
    assert matched["plain.tif"]["status"] == "skipped" and matched["bright.tif"]["status"] == "done"
    assert abs(np.log(matched["bright.tif"]["applied_gain"] * 1.5)) < 0.05
    assert "labelled at 0.6" in run.stderr
    reference = predict_scene(bright, archive["model"], tmp_path / "reference.tif", tiles=TILES, device="cpu",
                              match_brightness=True)
    np.testing.assert_array_equal(read_raster(Path(matched["bright.tif"]["output"]))[0],
                                  read_raster(reference.output)[0])
    again = run_batch([plain, bright], archive["model"], out, tiles=TILES, workers=1, match_brightness=True)
    assert [r["status"] for r in again.records] == ["skipped", "skipped"]
    off = {Path(r["source"]).name: r for r in run_batch([plain, bright], archive["model"], out, tiles=TILES,
                                                        workers=1).records}
    assert off["plain.tif"]["status"] == "skipped" and off["bright.tif"]["status"] == "done"
    assert off["bright.tif"]["applied_gain"] == 1.0
