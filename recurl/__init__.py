"""recurl: train agents with memory (LSTM, GRU, RNN and linear-recurrent cores) on partially observable tasks.

The top-level names load on first use (PEP 562), so that ``import recurl`` (and ``recurl --help``) stays
fast and does not import torch until a model is needed; ``import recurl`` registers recurl's env ids.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recurl.envs import register as _register
from recurl.version import __version__

_register()

_EXPORTS = {
    "Agent": "recurl.agent",
    "BCConfig": "recurl.algos", "BehaviourCloning": "recurl.algos", "PPOConfig": "recurl.algos",
    "R2D2": "recurl.algos", "R2D2Config": "recurl.algos", "RecurrentPPO": "recurl.algos",
    "RecurrentSAC": "recurl.algos", "SACConfig": "recurl.algos",
    "evaluate_policy": "recurl.evaluation",
    "load_model": "recurl.runs",
}
__all__ = ["Agent", "BCConfig", "BehaviourCloning", "PPOConfig", "R2D2", "R2D2Config", "RecurrentPPO",
           "RecurrentSAC", "SACConfig", "__version__", "evaluate_policy", "load_model"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from recurl.agent import Agent
    from recurl.algos import (
        R2D2,
        BCConfig,
        BehaviourCloning,
        PPOConfig,
        R2D2Config,
        RecurrentPPO,
        RecurrentSAC,
        SACConfig,
    )
    from recurl.evaluation import evaluate_policy
    from recurl.runs import load_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recurl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
