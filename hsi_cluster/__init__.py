"""hsicluster: unsupervised clustering of large hyperspectral scenes (SSCC)."""

__version__ = "0.1.0"
