"""io.paths: scene arguments to paths (``..`` taken out) and which scenes ``--exclude`` leaves out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsi_cluster.io.paths import ExcludedScenes, expand_scene_paths
from tests import helpers


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """archive/tiles/{a,b_fewbands,c}.tif and a sibling folder to run from."""
    tiles = tmp_path / "archive" / "tiles"
    tiles.mkdir(parents=True)
    for name in ("a", "b_fewbands", "c"):
        helpers.write_geotiff(tiles / f"{name}.tif", helpers.synthetic_cube(3, 8, 8))
    (tmp_path / "archive" / "run").mkdir()
    return tmp_path / "archive"


def test_a_pattern_through_dotdot_gives_the_plain_path(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'../tiles/*.tif' from a sibling folder names the files as 'tiles/*.tif' does (a batch rerun through '..'
    took its scenes for others and refused to write over their labels)."""
    monkeypatch.chdir(archive / "run")
    through_dotdot = expand_scene_paths(["../tiles/*.tif", "./../tiles/a.tif"])
    assert through_dotdot == [archive / "tiles" / f"{n}.tif" for n in ("a", "b_fewbands", "c")]
    assert through_dotdot == expand_scene_paths([str(archive / "tiles" / "*.tif")])


def test_dotdot_after_a_link_to_a_folder_is_kept(archive: Path, tmp_path: Path) -> None:
    """``link/..`` is the parent of the link's target, not the link's folder: such a path is kept as given."""
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    os.symlink(archive / "tiles", elsewhere / "link")
    scene = helpers.write_geotiff(tmp_path / "elsewhere" / "d.tif", helpers.synthetic_cube(3, 8, 8)).path
    given = elsewhere / "link" / ".." / "tiles" / "a.tif"  # archive/tiles/a.tif on disk
    assert expand_scene_paths([given]) == [given]
    assert expand_scene_paths([elsewhere / ".." / "d.tif"]) == [scene]


def test_a_bare_exclude_pattern_matches_file_names_and_an_unused_one_is_told(archive: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--exclude '*fewbands*' (no folder part) left out nothing, in silence, unless run from the scenes' folder."""
    monkeypatch.chdir(archive / "run")
    told: list[str] = []
    kept = expand_scene_paths(["../tiles/*.tif"], exclude=["*fewbands*", "c.tif", "*typo*"], log=told.append)
    assert kept == [archive / "tiles" / "a.tif"]
    assert told == ["warning: --exclude '*typo*' matched none of the scenes (a path or pattern names files from the "
                    "current folder, a bare name or pattern such as '*bad*' any scene's file name)",
                    "left out 2 scenes matching --exclude (b_fewbands.tif, c.tif)"]
    excluded = ExcludedScenes(["../tiles/b*", "tiles/a.tif"])  # with a folder part: from the current folder only
    assert [p.name for p in (archive / "tiles").iterdir() if p in excluded] == ["b_fewbands.tif"]
    assert excluded.unused(sorted((archive / "tiles").iterdir())) == ["tiles/a.tif"]
