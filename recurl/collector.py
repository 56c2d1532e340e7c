"""The one stepping path: a Gymnasium vector env under NEXT_STEP autoreset, with per-env recurrent state.

Every caller that acts in an env goes through :class:`Collector`: PPO rollouts, R2D2 actors,
:func:`recurl.evaluate_policy` (``recurl eval``), ``recurl enjoy`` and ``recurl record``. It owns the env
side of the recurrent-state contract, so that it is written once:

- ``is_first[i]`` is true when ``obs[i]`` is the first observation of an episode: after ``reset``, and
  on the observation returned by the step *after* an episode ended (NEXT_STEP autoreset). The policy's
  core zeroes its state there; the collector only carries the state the policy returns.
- ``valid[i]`` is false on that autoreset step: the env ignores its action and returns reward 0, so
  it is no transition and must be masked out of every loss, statistic and dataset.
- Policy actions become env actions in one place (:func:`env_action`: ``Discrete.start`` and
  ``MultiDiscrete.start`` shifts, Box clipping), then pass an optional action-delay queue
  (:class:`ActionQueue`), the run-time side of behaviour cloning's action delay.
- Env output is checked every step (shape, dtype, NaN/inf observations and rewards), and a problem is
  one :class:`~recurl.errors.RecurlError` naming the env, the step and the sub-env.
- Action masks, when the env has them (sb3-contrib's ``action_masks()`` method, or PettingZoo's
  ``action_mask`` key of a Dict observation): :attr:`Collector.action_mask` ``[N, n]`` bool for the
  current observations, checked (right width, at least one valid action per env).
- Episode statistics (return, length, success) and, on request, the finished episodes themselves.

A caller's loop is two lines per step::

    dist, new_state = policy.act(col.obs, col.state, col.is_first, col.action_mask)
    step = col.step(dist.sample(), new_state)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from recurl.data.trajectories import Episode, episode_from_lists
from recurl.errors import RecurlError
from recurl.nn.encoders import Obs
from recurl.obs import ObsConverter, mask_width


# ---------------------------------------------------------------------------------------------------
# Actions: policy -> env, and the action-delay queue
# ---------------------------------------------------------------------------------------------------
def env_action(space: gym.Space, action: torch.Tensor | np.ndarray) -> np.ndarray:
    """Policy actions ``[N, ...]`` -> env actions: Box clipped to its bounds, (Multi)Discrete shifted by
    ``start`` (policies index actions from 0)."""
    a = action.cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
    if isinstance(space, gym.spaces.Box):
        return np.clip(a, space.low, space.high)
    if isinstance(space, gym.spaces.Discrete):
        return a + space.start if space.start else a
    if isinstance(space, gym.spaces.MultiDiscrete) and space.start.any():
        return a + space.start
    return a


def default_action(space: gym.Space) -> np.ndarray:
    """The action a delayed policy executes before its first choice arrives: the space's lowest action
    (``start`` for Discrete/MultiDiscrete, zeros clipped into a Box)."""
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        return np.asarray(space.start, space.dtype)
    if isinstance(space, gym.spaces.Box):
        return np.clip(np.zeros(space.shape, space.dtype), space.low, space.high)
    raise RecurlError(f"action delay needs a Discrete, MultiDiscrete or Box action space, not {space}")


class ActionQueue:
    """Executes every env action ``delay`` steps after it was chosen, per env (behaviour cloning's delay).

    The action chosen from observation ``t`` of an episode runs at step ``t + delay``; the first ``delay``
    steps of each episode run :func:`default_action`. ``delay = 0`` passes actions straight through.
    """

    def __init__(self, space: gym.Space, n_envs: int, delay: int, default: np.ndarray | None = None) -> None:
        if delay < 0:
            raise RecurlError(f"action delay must be >= 0, got {delay}")
        self.delay = delay
        # ``default`` replaces the space's lowest action (e.g. a game controller at rest)
        if delay:
            self._default = default_action(space) if default is None else np.asarray(default, space.dtype)
        else:
            self._default = None
        self._queue = (np.broadcast_to(self._default, (delay, n_envs, *self._default.shape)).copy()
                       if delay else None)

    def __call__(self, actions: np.ndarray, is_first: np.ndarray) -> np.ndarray:
        """``actions[N, ...]`` chosen now, ``is_first[N]`` (a new episode starts: its queue is refilled with
        the default action) -> the actions to execute now, ``[N, ...]``."""
        if self._queue is None:
            return actions
        self._queue[:, is_first] = self._default
        executed = self._queue[0].copy()
        self._queue[:-1] = self._queue[1:]
        self._queue[-1] = np.asarray(actions, self._queue.dtype).reshape(self._queue.shape[1:])
        return executed


# ---------------------------------------------------------------------------------------------------
# Episode statistics (SB3's rollout/ep_rew_mean over the last 100 episodes)
# ---------------------------------------------------------------------------------------------------
class EpisodeStats:
    """Undiscounted returns, lengths and success flags of the last ``window`` finished episodes."""

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.successes: list[float] = []
        self.episodes = 0

    def add(self, returns: np.ndarray, lengths: np.ndarray, successes: list[float]) -> None:
        """Fold in the episodes that just finished."""
        self.returns += [float(r) for r in returns]
        self.lengths += [int(n) for n in lengths]
        self.successes += successes
        self.episodes += len(returns)
        del self.returns[: -self.window], self.lengths[: -self.window], self.successes[: -self.window]

    def summary(self) -> dict[str, float]:
        """SB3's ``rollout/*`` scalars (only ``rollout/episodes`` before any episode has finished)."""
        if not self.returns:
            return {"rollout/episodes": self.episodes}
        out = {"rollout/ep_rew_mean": float(np.mean(self.returns)),
               "rollout/ep_len_mean": float(np.mean(self.lengths)),
               "rollout/episodes": self.episodes}
        if self.successes:
            out["rollout/success_rate"] = float(np.mean(self.successes))
        return out

    def state(self) -> dict[str, Any]:
        """JSON-able contents, saved with a checkpoint."""
        return {"returns": self.returns, "lengths": self.lengths, "successes": self.successes,
                "episodes": self.episodes}

    def load(self, d: dict[str, Any]) -> None:
        self.returns, self.lengths = list(d["returns"]), list(d["lengths"])
        self.successes, self.episodes = list(d["successes"]), int(d["episodes"])


# ---------------------------------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------------------------------
def mask_source(env: gym.vector.VectorEnv) -> str | None:
    """Where ``env``'s action masks come from: ``"obs"`` (an ``action_mask`` key of a Dict observation),
    ``"vector"`` (the vector env's own ``action_masks()``), ``"call"`` (each sub-env's ``action_masks()``),
    or ``None`` (no masks)."""
    space = env.single_observation_space
    if isinstance(space, gym.spaces.Dict) and "action_mask" in space.spaces:
        return "obs"
    if callable(getattr(env.unwrapped, "action_masks", None)):
        return "vector"
    subs = getattr(env.unwrapped, "envs", None)
    if subs and callable(getattr(subs[0].unwrapped, "action_masks", None)):
        return "call"
    return None


def _env_name(env: gym.vector.VectorEnv) -> str:
    """The registered id of a vector env's sub-envs, else their class name (for error messages)."""
    sub = getattr(env, "envs", [None])[0]
    for e in (env, sub):
        if getattr(getattr(e, "spec", None), "id", None):
            return e.spec.id
    return type(sub.unwrapped if sub is not None else env.unwrapped).__name__


@dataclass(frozen=True)
class Step:
    """What one vector-env step produced, for ``N`` envs.

    ``obs``/``is_first``/``valid`` describe the step just taken (the observation acted on, ``[N, ...]``
    torch; ``is_first[N]`` torch bool; ``valid[N]`` numpy bool, false on autoreset steps). ``action`` is
    the policy's action ``[N, ...]``, ``reward``/``terminated``/``truncated`` ``[N]`` numpy, ``info`` the
    env's info dict. ``finished`` are the envs whose episode ended at this step, with their
    ``episode_returns`` and ``episode_lengths``.
    """

    obs: Obs
    is_first: torch.Tensor
    valid: np.ndarray
    action: torch.Tensor
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any]
    finished: np.ndarray
    episode_returns: np.ndarray
    episode_lengths: np.ndarray

    def success(self, i: int) -> bool | None:
        """``info["success"]`` of env ``i`` at this step, or ``None`` when the env reports none."""
        if "success" not in self.info or not self.info.get("_success", np.ones(len(self.reward), bool))[i]:
            return None
        return bool(self.info["success"][i])


class Collector:
    """Steps ``env`` (a vector env with NEXT_STEP autoreset) for a policy that keeps recurrent state.

    Args:
        env: the vector env; its observations are converted to torch on ``device``.
        device: where observations and ``is_first`` live.
        action_delay: run every action this many steps after it was chosen (:class:`ActionQueue`).
        record: keep every finished episode (observations, env actions, rewards, flags) for
            :meth:`pop_episodes`, e.g. to write a dataset.
        env_id: the env's name in error messages.
        policy_actions: actions passed to :meth:`step` are the policy's (indexed from 0, mapped by
            :func:`env_action`); false for a scripted expert that already speaks the env's actions.
        masks: read the env's action masks when it has them (false: ignore them, an unmasked baseline).

    The policy's state is opaque here (any tuple of tensors): :meth:`step` stores what the policy returned,
    and :attr:`state` hands it back for the next step.
    """

    def __init__(self, env: gym.vector.VectorEnv, device: torch.device | str = "cpu", action_delay: int = 0,
                 record: bool = False, env_id: str | None = None, policy_actions: bool = True,
                 masks: bool = True) -> None:
        self.env, self.device = env, torch.device(device)
        self.num_envs = n = env.num_envs
        self.env_id = env_id or _env_name(env)
        self.conv = ObsConverter(env.single_observation_space)
        self.action_space = env.single_action_space
        self.queue = ActionQueue(self.action_space, n, action_delay)
        self.mask_source = mask_source(env) if masks else None
        self.action_mask: torch.Tensor | None = None  # [N, n] bool, when the env has masks
        self.stats = EpisodeStats()
        self.record = record
        self.policy_actions = policy_actions
        self.t = 0
        self.obs: Obs = None
        self.state: Any = ()
        self.is_first = torch.ones(n, dtype=torch.bool, device=self.device)
        self.valid = np.ones(n, bool)
        self._ret, self._len = np.zeros(n), np.zeros(n, np.int64)
        self._episodes: list[Episode] = []
        self._open: list[dict[str, list[Any]] | None] = [None] * n

    def reset(self, seed: int | None, state: Any) -> dict[str, Any]:
        """Reset every env (``seed`` seeds the first reset) and start from ``state``; returns the reset info."""
        obs, info = self.env.reset(seed=seed)
        self._set_obs(obs)
        self.state = state
        self.is_first = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.valid = np.ones(self.num_envs, bool)
        self._ret[:], self._len[:] = 0.0, 0
        self._open = [self._new_episode(i, obs) for i in range(self.num_envs)] if self.record else self._open
        return info

    def step(self, action: torch.Tensor | np.ndarray, state: Any = ()) -> Step:
        """Execute the policy's ``action[N, ...]`` (chosen from :attr:`obs`, :attr:`state`, :attr:`is_first`)
        and keep ``state``, the policy's state after that observation."""
        obs_acted, first_acted, valid = self.obs, self.is_first, self.valid
        mapped = env_action(self.action_space, action) if self.policy_actions else np.asarray(action)
        executed = self.queue(mapped, first_acted.cpu().numpy()) if self.queue.delay else mapped
        self.t += 1
        try:
            next_obs, reward, term, trunc, info = self.env.step(executed)
        except ValueError as e:  # e.g. a vector env that cannot stack a sub-env's wrongly shaped observation
            raise RecurlError(f"env {self.env_id} failed at step {self.t}: {e} (check the observations it returns "
                              f"against its observation space {self.conv.space})") from None
        reward = np.asarray(reward, np.float64)
        if not np.isfinite(reward).all():
            bad = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise RecurlError(f"env {self.env_id} returned reward {reward[bad]} at step {self.t} (sub-env {bad}): "
                              "rewards must be finite numbers")
        self._set_obs(next_obs)
        self._ret += np.where(valid, reward, 0.0)
        self._len += valid
        done = np.logical_or(term, trunc)
        finished = np.flatnonzero(done & valid)
        step = Step(obs_acted, first_acted, valid, action, reward, np.asarray(term, bool), np.asarray(trunc, bool),
                    info, finished, self._ret[finished].copy(), self._len[finished].copy())
        if finished.size:
            successes = [float(s) for s in (step.success(int(i)) for i in finished) if s is not None]
            self.stats.add(step.episode_returns, step.episode_lengths, successes)
            self._ret[finished], self._len[finished] = 0.0, 0
        if self.record:
            self._record(step, executed, next_obs)
        self.state = state
        # The step after a done resets that env: the observation it returns starts the next episode.
        self.is_first = torch.as_tensor(~valid, device=self.device)
        self.valid = ~done
        return step

    def pop_episodes(self) -> list[Episode]:
        """The episodes finished since the last call (``record=True`` only), in the order they ended."""
        out, self._episodes = self._episodes, []
        return out

    # -- internals -------------------------------------------------------------------------------------
    def _set_obs(self, obs: Any) -> None:
        self._check_obs(obs)
        self.obs = self.conv.to_torch(obs, self.device)
        if self.mask_source is not None:
            self.action_mask = self._read_masks(obs)

    def _read_masks(self, obs: Any) -> torch.Tensor:
        """The valid-action masks of the current observations, checked: ``[N, n]`` bool."""
        if self.mask_source == "obs":
            m = obs["action_mask"]
        elif self.mask_source == "vector":
            m = self.env.unwrapped.action_masks()
        else:
            m = np.stack(self.env.call("action_masks"))
        m = np.asarray(m).astype(bool).reshape(self.num_envs, -1)
        if m.shape[1] != mask_width(self.action_space):
            raise RecurlError(f"env {self.env_id} gave action masks of width {m.shape[1]} at step {self.t}, expected "
                              f"{mask_width(self.action_space)} for {self.action_space}")
        if not m.any(1).all():
            raise RecurlError(f"env {self.env_id} masked every action of sub-env {int(np.flatnonzero(~m.any(1))[0])} "
                              f"at step {self.t}: at least one action must be valid")
        return torch.as_tensor(m, device=self.device)

    def _check_obs(self, obs: Any) -> None:
        """Env output is trusted by the policy: check it here, once per step, and name the culprit."""
        leaves = obs if self.conv.is_dict else {None: obs}
        if self.conv.is_dict and (not isinstance(obs, dict) or set(obs) != set(self.conv.leaves)):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise RecurlError(f"env {self.env_id} returned an observation with keys {got} at step {self.t}, "
                              f"expected {sorted(self.conv.leaves)}")
        for key, space in self.conv.leaves.items():
            a = np.asarray(leaves[key])
            name = "observation" if key is None else f"observation[{key!r}]"
            want = (self.num_envs, *(space.shape or ()))
            if a.shape != want:
                raise RecurlError(f"env {self.env_id} returned an {name} of shape {a.shape[1:]} at step {self.t}, "
                                  f"expected {want[1:]} for {space}")
            if a.dtype.kind not in "biuf":
                raise RecurlError(f"env {self.env_id} returned an {name} of dtype {a.dtype} at step {self.t}, "
                                  f"expected numbers for {space}")
            # a finite sum proves every entry finite with one reduction; a sum of large values can overflow
            if a.dtype.kind == "f" and not math.isfinite(a.sum()) and not np.isfinite(a).all():
                bad = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))[0])
                raise RecurlError(f"env {self.env_id} returned an {name} with NaN or infinity at step {self.t} "
                                  f"(sub-env {bad}): check the env or the wrapper that made it")

    def _obs_of(self, obs: Any, i: int) -> Any:
        return {k: np.asarray(v[i]) for k, v in obs.items()} if self.conv.is_dict else np.asarray(obs[i])

    def _new_episode(self, i: int, obs: Any) -> dict[str, list[Any]]:
        return {"obs": [self._obs_of(obs, i)], "actions": [], "rewards": [], "terminated": [], "truncated": []}

    def _record(self, step: Step, executed: np.ndarray, next_obs: Any) -> None:
        for i in range(self.num_envs):
            if not step.valid[i]:  # the autoreset step: next_obs is the new episode's first observation
                self._open[i] = self._new_episode(i, next_obs)
                continue
            ep = self._open[i]
            for key, value in (("obs", self._obs_of(next_obs, i)), ("actions", np.asarray(executed[i])),
                               ("rewards", float(step.reward[i])), ("terminated", bool(step.terminated[i])),
                               ("truncated", bool(step.truncated[i]))):
                ep[key].append(value)
            if step.terminated[i] or step.truncated[i]:
                self._episodes.append(episode_from_lists(**ep))
                self._open[i] = None
