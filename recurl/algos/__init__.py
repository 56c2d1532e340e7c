"""The algorithm registry: ``recurl train --algo NAME`` and run loading dispatch through it.

Each algorithm module provides a frozen config dataclass and an algorithm class with
``Algo(config=cfg)``, ``learn(run_dir=..., progress=...)``, ``Algo.load(path, device=...)``,
``Algo.resume(run_dir, progress=...)``, and the attributes ``config``, ``policy``, ``device``,
``num_timesteps`` and ``_make_env(n, render_mode=None)`` used by evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from recurl.errors import RecurlError

ALGOS: dict[str, tuple[str, str, str]] = {
    "ppo": ("recurl.algos.ppo", "PPOConfig", "RecurrentPPO"),
    "r2d2": ("recurl.algos.r2d2", "R2D2Config", "R2D2"),
    "bc": ("recurl.algos.bc", "BCConfig", "BehaviourCloning"),
}


def algo_classes(name: str) -> tuple[type, type]:
    """``(ConfigClass, AlgoClass)`` of a registered algorithm."""
    if name not in ALGOS:
        raise RecurlError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGOS)}")
    module, cfg_name, algo_name = ALGOS[name]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, algo_name)


def build_config(cfg_cls: type, overrides: dict[str, Any]) -> Any:
    """Instantiate ``cfg_cls`` from a dict whose ``policy`` entry may itself be a dict of fields."""
    overrides = dict(overrides)
    pol = overrides.pop("policy", None)
    try:
        cfg = cfg_cls(**overrides)
        if pol:
            pol = {k: tuple(v) if isinstance(v, list) else v for k, v in pol.items()}
            cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, **pol))
    except TypeError as e:
        raise RecurlError(f"bad {cfg_cls.__name__} option: {e}") from None
    return cfg
