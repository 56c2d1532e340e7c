"""MuJoCo locomotion with the velocities (or the positions) hidden: pomdp-baselines' ``-P``/``-V`` tasks.

Ni et al. 2022 mask PyBullet's HalfCheetah, Hopper, Walker and Ant; recurl masks Gymnasium's MuJoCo ``v5``
tasks the same way. Their observation is ``[qpos[k:], qvel]`` (``k`` = 1: the x position of the torso is
excluded by default). Two POMDPs keep one part:

- ``recurl/<Task>-P-v5`` keeps the *positions* ``qpos[k:]`` (joint angles, torso height and pitch): every
  velocity must be inferred from consecutive positions.
- ``recurl/<Task>-V-v5`` keeps the *velocities* ``qvel``: the posture must be integrated from them.

Tasks: ``HalfCheetah`` (17 -> P 8 / V 9), ``Hopper`` (11 -> P 5 / V 6), ``Walker2d`` (17 -> P 8 / V 9).
Dynamics, reward, actions and the 1000-step time limit are Gymnasium's. Needs ``pip install
'recurl[mujoco]'``; without MuJoCo the ids are registered but building one says what to install.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np

from recurl.errors import RecurlError

#: task -> Gymnasium's env class (module, class name); each observes [qpos[k:], qvel] and nothing else
TASKS = {"HalfCheetah": ("half_cheetah_v5", "HalfCheetahEnv"), "Hopper": ("hopper_v5", "HopperEnv"),
         "Walker2d": ("walker2d_v5", "Walker2dEnv")}
MUJOCO_POMDP_IDS = tuple(f"recurl/{task}-{keep}-v5" for task in TASKS for keep in "PV")


def kept_indices(n_qpos: int, n_qvel: int, excluded: int, keep: str) -> np.ndarray:
    """Indices of ``[qpos[excluded:], qvel]`` that ``keep`` ("P": positions, "V": velocities) leaves."""
    n_pos = n_qpos - excluded
    if keep == "P":
        return np.arange(n_pos)
    if keep == "V":
        return np.arange(n_pos, n_pos + n_qvel)
    raise RecurlError(f"keep must be 'P' (positions) or 'V' (velocities), got {keep!r}")


class MaskedObs(gym.ObservationWrapper):
    """Observe only ``indices`` of a flat Box observation."""

    def __init__(self, env: gym.Env, indices: np.ndarray) -> None:
        super().__init__(env)
        self.indices = indices
        full = env.observation_space
        self.observation_space = gym.spaces.Box(full.low[indices], full.high[indices], dtype=full.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.indices]


def make_mujoco_pomdp(task: str, keep: str, **kwargs: Any) -> gym.Env:
    """Gymnasium's ``<task>-v5`` env (``kwargs`` are its options) observing only its positions or velocities."""
    module, cls = TASKS[task]
    try:
        env_cls = getattr(importlib.import_module(f"gymnasium.envs.mujoco.{module}"), cls)
    except ModuleNotFoundError as e:  # mujoco itself, or gymnasium's MuJoCo dependency (imageio)
        raise RecurlError(f"recurl/{task}-{keep}-v5 needs MuJoCo ({e.name} is not installed): "
                          "pip install 'recurl[mujoco]'") from None
    env = env_cls(**kwargs)
    excluded = 1 if getattr(env, "_exclude_current_positions_from_observation", True) else 0
    return MaskedObs(env, kept_indices(env.data.qpos.size, env.data.qvel.size, excluded, keep))
