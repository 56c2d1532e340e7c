"""The algorithm registry: ``recurl train --algo NAME`` and run loading dispatch through it.

Every algorithm has the same API (:class:`~recurl.algos.base.Algorithm`): ``Algo(env, config, **overrides)``,
``learn(total_steps, callback, reset_num_timesteps, progress_bar, run_dir)``, ``predict``, ``save``,
``Algo.load``, ``Algo.resume``, and a frozen config dataclass.
"""

from __future__ import annotations

from recurl.algos.base import Algorithm, build_config
from recurl.algos.bc import BCConfig, BehaviourCloning
from recurl.algos.melee import MeleeConfig, MeleeImitation
from recurl.algos.ppo import PPOConfig, RecurrentPPO
from recurl.algos.r2d2 import R2D2, R2D2Config
from recurl.algos.sac import RecurrentSAC, SACConfig
from recurl.errors import RecurlError

ALGOS: dict[str, tuple[type, type[Algorithm]]] = {
    "ppo": (PPOConfig, RecurrentPPO),
    "r2d2": (R2D2Config, R2D2),
    "bc": (BCConfig, BehaviourCloning),
    "sac": (SACConfig, RecurrentSAC),
    "melee": (MeleeConfig, MeleeImitation),
}

__all__ = ["ALGOS", "Algorithm", "BCConfig", "BehaviourCloning", "MeleeConfig", "MeleeImitation", "PPOConfig",
           "R2D2", "R2D2Config", "RecurrentPPO", "RecurrentSAC", "SACConfig", "algo_classes", "build_config"]


def algo_classes(name: str) -> tuple[type, type[Algorithm]]:
    """``(ConfigClass, AlgoClass)`` of a registered algorithm."""
    if name not in ALGOS:
        raise RecurlError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGOS)}")
    return ALGOS[name]
