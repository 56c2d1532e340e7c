"""recurl's tasks, registered as Gymnasium ids, and the one function that builds vector envs.

Registered ids: ``recurl/CartPoleNoVel-v1``, ``recurl/TMaze-v0``, ``recurl/RepeatPrevious-v0``,
``recurl/Pendulum-P-v1`` and ``recurl/Pendulum-V-v1`` (Pendulum-v1 observing only the angle / only the
velocity), ``recurl/{HalfCheetah,Hopper,Walker2d}-{P,V}-v5`` (MuJoCo without velocities / without
positions, with ``recurl[mujoco]``) and the seven ``recurl/SwampTour-<task>-v0``. Bare names users know
(``CartPoleNoVel-v1``) resolve to ours.
Third-party suites resolve by their own ids once installed (:data:`SUITES`), and any other package's ids
with Gymnasium's ``module:EnvId`` form where the user typed it.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import gymnasium as gym

from recurl.envs.mujoco_pomdp import TASKS as MUJOCO_TASKS
from recurl.envs.swamptour import register_swamptour
from recurl.envs.wrappers import (
    FlattenObs,
    MiniGridImageBounds,
    PrevActionReward,
    has_minigrid_image,
    needs_flattening,
)
from recurl.errors import RecurlError

RECURL_IDS = ("recurl/CartPoleNoVel-v1", "recurl/TMaze-v0", "recurl/RepeatPrevious-v0", "recurl/Pendulum-P-v1",
              "recurl/Pendulum-V-v1")
#: id prefix of a third-party suite -> the package whose import registers its ids (and recurl's extra for it)
SUITES = {"popgym-": "popgym", "MiniGrid-": "minigrid", "BabyAI-": "minigrid"}


def register() -> None:
    """Register recurl's env ids with Gymnasium (idempotent; runs on ``import recurl``)."""
    specs = {
        "recurl/CartPoleNoVel-v1": dict(
            entry_point="recurl.envs.cartpole_novel:CartPoleNoVelEnv",
            vector_entry_point="recurl.envs.cartpole_novel:make_cartpole_novel_vec",
            max_episode_steps=500,
            reward_threshold=475.0,
        ),
        "recurl/TMaze-v0": dict(entry_point="recurl.envs.tmaze:TMazeEnv"),
        "recurl/RepeatPrevious-v0": dict(entry_point="recurl.envs.repeat_previous:RepeatPreviousEnv"),
        # Pendulum-v1 POMDPs (pomdp-baselines): P keeps cos/sin of the angle, V keeps the angular velocity.
        **{f"recurl/Pendulum-{keep}-v1": dict(entry_point="recurl.envs.pendulum_pomdp:PendulumPOMDPEnv",
                                              kwargs={"keep": keep}, max_episode_steps=200) for keep in "PV"},
        # MuJoCo v5 locomotion POMDPs (pomdp-baselines): P keeps the positions, V the velocities (recurl[mujoco]).
        **{f"recurl/{task}-{keep}-v5": dict(entry_point="recurl.envs.mujoco_pomdp:make_mujoco_pomdp",
                                            kwargs={"task": task, "keep": keep}, max_episode_steps=1000)
           for task in MUJOCO_TASKS for keep in "PV"},
    }
    for env_id, kwargs in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)
    register_swamptour()


def suite_of(env_id: str) -> str | None:
    """The package of the third-party suite (:data:`SUITES`) whose id ``env_id`` is, or ``None``."""
    return next((pkg for prefix, pkg in SUITES.items() if env_id.startswith(prefix)), None)


def resolve_env_id(env_id: str, allow_import: bool = False) -> str:
    """Return the registered id for ``env_id`` (``CartPoleNoVel-v1`` -> ``recurl/CartPoleNoVel-v1``).

    An id of a suite in :data:`SUITES` (``popgym-...``, ``MiniGrid-...``) imports that suite's package, a
    module recurl names, never one the id names. Gymnasium's ``module:EnvId`` imports ``module`` first and
    resolves to ``EnvId``; only with ``allow_import``, for ids the user typed (``recurl train --env``, an
    algorithm's ``env``): an id read from a saved run or a dataset must name no code to run.
    """
    register()
    module, colon, name = env_id.rpartition(":")
    if colon:
        if not allow_import:
            raise RecurlError(f"env id {env_id!r} names a module to import, which recurl does only for an id you "
                              f"pass yourself (recurl train --env, the algorithm's env), not one read from a file: "
                              f"use the registered id {name!r}")
        _import(module, f"env id {env_id!r} names the module {module!r}, which is not installed: install the "
                        "package that provides it")
        env_id = name
    suite = suite_of(env_id)
    if suite is not None:
        _import(suite, f"{env_id} is one of {suite}'s tasks: pip install 'recurl[{suite}]'")
    if env_id in gym.registry:
        return env_id
    if f"recurl/{env_id}" in gym.registry:
        return f"recurl/{env_id}"
    near = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    ours = ", ".join(sorted(k for k in gym.registry if k.startswith("recurl/")))
    raise RecurlError(f"unknown env id {env_id!r}: {hint}use a registered Gymnasium id, e.g. one of recurl's: {ours}")


def _import(module: str, missing: str) -> None:
    """Import ``module`` (which registers env ids as it loads); ``missing`` is the error when it is not
    installed. A module that is there but fails to import raises its own error."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(f"{e.name}.")):
            raise
        raise RecurlError(missing) from None


def make_vec_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    prev_action_reward: bool = False,
    render_mode: str | None = None,
) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as one Gymnasium vector env with NEXT_STEP autoreset.

    A registered native vector implementation (``vector_entry_point``) is used when there is one;
    otherwise the envs run in a ``SyncVectorEnv``. ``prev_action_reward`` wraps the result in
    :class:`~recurl.envs.wrappers.PrevActionReward`. Tuple, nested Dict and text-bearing observations are
    presented as a flat Dict (:class:`~recurl.envs.wrappers.FlattenObs`), the space the policy sees.
    MiniGrid's symbolic image gets its codes' real bounds (:class:`~recurl.envs.wrappers.MiniGridImageBounds`).
    """
    env_id = resolve_env_id(env_id)
    if num_envs < 1:
        raise RecurlError(f"num_envs must be >= 1, got {num_envs}")
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    spec = gym.spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    try:
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except (TypeError, ValueError, AssertionError, gym.error.Error) as e:
        # The constructor's own complaint (an unknown keyword, a value out of range, a missing extra),
        # with the env and options that caused it; an env's own bugs (other exception types) stay visible.
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no options"
        hint = ": check --env-kwargs" if env_kwargs else ""
        raise RecurlError(f"cannot build env {env_id} with {shown} ({type(e).__name__}: {e}){hint}") from None
    mode_used = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode_used != gym.vector.AutoresetMode.NEXT_STEP:
        raise RecurlError(f"{env_id}: recurl needs NEXT_STEP autoreset, the vector env uses {mode_used}")
    if suite_of(env_id) == "minigrid" and has_minigrid_image(env.single_observation_space):
        env = MiniGridImageBounds(env)
    if prev_action_reward:
        env = PrevActionReward(env)
    if needs_flattening(env.single_observation_space):
        env = FlattenObs(env)
    return env
