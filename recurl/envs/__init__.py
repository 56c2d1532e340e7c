"""recurl's tasks, registered as Gymnasium ids, and the one function that builds vector envs.

Registered ids: ``recurl/CartPoleNoVel-v1``, ``recurl/TMaze-v0``, ``recurl/RepeatPrevious-v0`` and the
seven ``recurl/SwampTour-<task>-v0``. Bare names users know (``CartPoleNoVel-v1``) resolve to ours.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from recurl.envs.swamptour import register_swamptour
from recurl.envs.wrappers import PrevActionReward
from recurl.errors import RecurlError

RECURL_IDS = ("recurl/CartPoleNoVel-v1", "recurl/TMaze-v0", "recurl/RepeatPrevious-v0")


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
    }
    for env_id, kwargs in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **kwargs)
    register_swamptour()


def resolve_env_id(env_id: str) -> str:
    """Return the registered id for ``env_id`` (``CartPoleNoVel-v1`` -> ``recurl/CartPoleNoVel-v1``)."""
    register()
    if env_id in gym.registry:
        return env_id
    if f"recurl/{env_id}" in gym.registry:
        return f"recurl/{env_id}"
    ours = ", ".join(sorted(k for k in gym.registry if k.startswith("recurl/")))
    raise RecurlError(f"unknown env id {env_id!r}: use a registered Gymnasium id, e.g. one of recurl's: {ours}")


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
    :class:`~recurl.envs.wrappers.PrevActionReward`.
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
    if prev_action_reward:
        env = PrevActionReward(env)
    return env
