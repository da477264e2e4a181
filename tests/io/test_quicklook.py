"""The quicklook PNG: a legend of the non-empty clusters with their pixel shares, nodata in grey, no warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from matplotlib.figure import Figure
from rasterio.crs import CRS

from hsi_cluster.io.label_raster import LEGEND_MAX, NODATA_COLOUR, write_quicklook


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each saved figure showed: legend texts, legend columns, the colour of masked (nodata) pixels."""
    seen: list[dict] = []
    savefig = Figure.savefig

    def spy(self, *args, **kwargs):
        ax = self.axes[0]
        legend = ax.get_legend()
        seen.append({"texts": [t.get_text() for t in legend.get_texts()] if legend else [],
                     "ncols": legend._ncols if legend else 0,
                     "bad": tuple(ax.images[0].cmap.get_bad()[:3])})
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_legend_lists_non_empty_clusters_with_shares_and_nodata(tmp_path: Path, figures: list[dict]) -> None:
    labels = np.full((10, 10), 255, np.uint8)  # 10 % nodata (of the scene)
    labels[1:, :5] = 0   # 45 pixels: 50 % of the 90 labelled
    labels[1:, 5:9] = 2  # 36: 40 %
    labels[1:, 9] = 5    # 9: 10 %
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_quicklook(labels, tmp_path / "q.png", n_clusters=6, nodata=255, title="t")
    assert not caught, [str(w.message) for w in caught]
    assert path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = figures
    assert figure["texts"] == ["cluster 0 (50.0 %)", "cluster 2 (40.0 %)", "cluster 5 (10.0 %)", "nodata (10.0 %)"]
    assert figure["ncols"] == 1
    assert figure["bad"] == pytest.approx(NODATA_COLOUR)


def test_counts_of_the_full_map_give_the_shares(tmp_path: Path, figures: list[dict]) -> None:
    labels = np.zeros((4, 4), np.uint8)  # a decimated map: only cluster 0 and no nodata seen
    write_quicklook(labels, tmp_path / "q.png", n_clusters=3, nodata=255, title="t", counts={0: 9999, 1: 0, 2: 1},
                    nodata_count=10_000)  # clusters: shares of the labelled pixels; nodata: of the scene
    assert figures[0]["texts"] == ["cluster 0 (100.0 %)", "cluster 2 (<0.1 %)", "nodata (50.0 %)"]


def test_many_clusters_no_warning_and_columns_from_entries(tmp_path: Path, figures: list[dict]) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 80, (200, 300)).astype(np.uint16)  # 80 of K = 300 non-empty
    labels[:20] = 65535
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_quicklook(labels, tmp_path / "q.png", n_clusters=300, nodata=65535, title="t")
        write_quicklook(labels % 7, tmp_path / "q7.png", n_clusters=300, nodata=65535, title="t")
    assert not caught, [str(w.message) for w in caught]
    many, few = figures
    assert len(many["texts"]) == LEGEND_MAX + 2  # the largest clusters, "20 more clusters (…)", nodata
    assert many["texts"][-2].startswith("20 more clusters (") and many["texts"][-1].startswith("nodata (")
    assert many["ncols"] == 4
    assert [t.split(" (")[0] for t in few["texts"]] == [f"cluster {k}" for k in range(7)]
    assert few["ncols"] == 1


@pytest.mark.parametrize(("transform", "crs", "drawn_ratio"), [
    ((30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0), "EPSG:32633", 0.5),  # square pixels: 40 rows of 80 columns
    ((30.0, 0.0, 500_000.0, 0.0, -60.0, 4_000_000.0), "EPSG:32633", 1.0),  # 60 m rows: a square of ground
    ((0.001, 0.0, 10.0, 0.0, -0.001, 60.02), "EPSG:4326", 1.0),  # degrees at 60° N: columns half as wide
    (None, None, 0.5),  # no georeferencing: square
])
def test_pixels_are_drawn_with_the_grounds_proportions(tmp_path: Path, transform: tuple | None, crs: str | None,
                                                       drawn_ratio: float) -> None:
    """The map's drawn height over its width is the ground's (it drew every pixel square)."""
    import matplotlib.image

    from hsi_cluster.io.label_raster import RasterGrid, colour_table

    labels = np.zeros((40, 80), np.uint8)
    grid = RasterGrid(40, 80, crs and CRS.from_user_input(crs).to_wkt(), transform)
    path = write_quicklook(labels, tmp_path / "q.png", n_clusters=3, nodata=255, title="t", grid=grid)
    picture = (matplotlib.image.imread(path)[..., :3] * 255).round()
    components, _ = scipy.ndimage.label(np.all(np.abs(picture - np.array(colour_table(3)[0][:3])) < 2, axis=-1))
    rows, cols = np.nonzero(components == np.argmax(np.bincount(components.ravel())[1:]) + 1)  # the map, not the legend
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert height / width == pytest.approx(drawn_ratio, rel=0.03)
