"""Small process-wide helpers: device choice, seeding, torch threads."""

from __future__ import annotations

import random

import numpy as np
import torch

from recurl.errors import RecurlError


def pick_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecurlError("device cuda requested but no CUDA GPU is available: use --device cpu")
    return dev


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Torch intra-op threads: ``threads``, or 1 for 0.

    recurl's networks are small: one thread is fastest for them, and with more, a busy machine makes
    OpenMP threads wait on each other (measured 4x slower with 2 threads on 2 loaded cores).
    """
    n = threads if threads > 0 else 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
