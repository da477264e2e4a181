"""Choosing the torch device a job runs on."""

from __future__ import annotations

import torch

from hsi_cluster.errors import HsiClusterError, option


def device_from(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HsiClusterError(f"{option('--device', 'cuda')}: no CUDA GPU is available to torch; use "
                              f"{option('--device', 'cpu')} or {option('--device', 'auto')}")
    if name not in ("cpu", "cuda"):
        raise HsiClusterError(f"{option('--device')} must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
