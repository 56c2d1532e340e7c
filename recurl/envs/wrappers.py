"""Vector-env wrappers: more for a memory policy to remember with, and observations made encodable."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from recurl.errors import RecurlError


def action_features(space: gym.Space) -> int:
    """Width of the float encoding of an action: one-hot for (Multi)Discrete, the vector for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise RecurlError(f"unsupported action space {space}: use Discrete, MultiDiscrete or Box")


def encode_actions(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """``actions[N, ...]`` -> float32 ``[N, action_features(space)]`` (one-hot for discrete actions)."""
    n = actions.shape[0]
    if isinstance(space, gym.spaces.Discrete):
        out = np.zeros((n, int(space.n)), np.float32)
        out[np.arange(n), actions.astype(np.int64) - int(space.start)] = 1.0
        return out
    if isinstance(space, gym.spaces.MultiDiscrete):
        offsets = np.concatenate([[0], np.cumsum(space.nvec.ravel())[:-1]])
        out = np.zeros((n, int(space.nvec.sum())), np.float32)
        out[np.arange(n)[:, None], offsets[None] + actions.reshape(n, -1).astype(np.int64)] = 1.0
        return out
    return actions.reshape(n, -1).astype(np.float32)


class PrevActionReward(gym.vector.VectorWrapper):
    """Observation becomes ``Dict(obs, prev_action, prev_reward)``; both are zero at every episode start.

    Works with Gymnasium's NEXT_STEP autoreset: the step that resets a sub-env returns its first
    observation, so that step's action and reward (ignored by the env) are replaced by zeros.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise RecurlError(f"PrevActionReward needs NEXT_STEP autoreset, the env uses {mode}")
        self._act_space = env.single_action_space
        width = action_features(self._act_space)
        self.single_observation_space = gym.spaces.Dict(
            {
                "obs": env.single_observation_space,
                "prev_action": gym.spaces.Box(-np.inf, np.inf, (width,), np.float32),
                "prev_reward": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            }
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._resetting = np.zeros(env.num_envs, bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._resetting[:] = False
        n = self.num_envs
        zeros_a = np.zeros((n, action_features(self._act_space)), np.float32)
        return {"obs": obs, "prev_action": zeros_a, "prev_reward": np.zeros((n, 1), np.float32)}, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        prev_a = encode_actions(self._act_space, np.asarray(actions))
        prev_r = np.asarray(reward, np.float32).reshape(-1, 1).copy()
        prev_a[self._resetting] = 0.0
        prev_r[self._resetting] = 0.0
        self._resetting = np.logical_or(terminated, truncated)
        return {"obs": obs, "prev_action": prev_a, "prev_reward": prev_r}, reward, terminated, truncated, info


def is_text(space: gym.Space) -> bool:
    """A space of strings (Gymnasium's ``Text``, MiniGrid's ``MissionSpace``): no tensor encodes it."""
    return space.dtype is not None and space.dtype.kind == "U"


def needs_flattening(space: gym.Space) -> bool:
    """Whether :class:`FlattenObs` changes ``space``: a Tuple, or a Dict holding a Dict, a Tuple or text."""
    nested = gym.spaces.Dict | gym.spaces.Tuple
    return isinstance(space, gym.spaces.Tuple) or (
        isinstance(space, gym.spaces.Dict) and any(isinstance(s, nested) or is_text(s) for s in space.values()))


def _children(x: Any) -> list[tuple[str, Any]] | None:
    """The named children of a Dict/Tuple space or of a dict/tuple observation (``None``: a leaf)."""
    if isinstance(x, gym.spaces.Dict | dict):
        return [(str(k), v) for k, v in x.items()]
    if isinstance(x, gym.spaces.Tuple | tuple):
        return [(str(i), v) for i, v in enumerate(x)]
    return None


def _flatten(x: Any, drop: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of the nested ``x`` by dotted path (``"0"``, ``"obs.image"``), without those ``drop`` selects."""
    children = _children(x)
    if children is None:
        return {} if drop(x) else {prefix: x}
    out: dict[str, Any] = {}
    for key, child in children:
        flat = _flatten(child, drop, f"{prefix}.{key}" if prefix else key)
        if out.keys() & flat.keys():  # e.g. a key "a.b" next to a Dict "a" holding "b"
            raise RecurlError(f"observation keys {sorted(out.keys() & flat.keys())} occur twice once nested keys "
                              "are joined with '.': rename the env's observation keys")
        out.update(flat)
    return out


def flatten_space(space: gym.Space) -> gym.spaces.Dict:
    """A Tuple or (nested) Dict space as one flat Dict: keys are dotted paths (``"0"``, ``"1"`` for a Tuple's
    entries, ``"obs.image"`` inside a Dict) and text leaves are left out."""
    return gym.spaces.Dict(_flatten(space, is_text))


def flatten_obs(obs: Any) -> dict[str, Any]:
    """An observation of a Tuple or nested Dict space (one, or a vector env's batch) laid out as
    :func:`flatten_space` lays out the space; strings (text leaves, one or a batch of them) are left out."""
    return _flatten(obs, lambda leaf: isinstance(leaf, str))


class FlattenObs(gym.vector.VectorObservationWrapper):
    """Presents a Tuple, nested Dict or text-bearing observation as the flat Dict of :func:`flatten_space`.

    POPGym's Autoencode observes ``Tuple(Discrete(2), Discrete(4))``: the policy sees ``Dict("0", "1")``.
    MiniGrid observes ``Dict(direction, image, mission)``: the policy sees ``Dict(direction, image)``.
    Text leaves are dropped, silently by design: no tensor encodes a string, and where the text is fixed
    (MiniGrid's Memory tasks) nothing is lost. A task whose text varies and matters (BabyAI's missions)
    needs it turned into numbers by a wrapper of your own first (e.g. an index into the known missions).

    Saved runs and ONNX exports describe the flat space, the one the policy sees; ``predict`` and
    :class:`recurl.Agent` also take the env's own observations and flatten them the same way
    (:func:`flatten_obs`).
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.single_observation_space = flatten_space(env.single_observation_space)
        if not self.single_observation_space.spaces:
            raise RecurlError(f"observation space {env.single_observation_space} has nothing recurl can encode "
                              "(its text leaves are dropped): add numeric observations")
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    def observations(self, observations: Any) -> dict[str, Any]:
        return flatten_obs(observations)


class MiniGridImageBounds(gym.vector.VectorObservationWrapper):
    """MiniGrid's ``image`` is not pixels but a grid of codes (object, colour, state per cell) that the
    env declares as ``Box(0, 255)``; this declares their real bounds (10, 5 and 2 in MiniGrid 3), so the
    image encoder scales each channel to ``[0, 1]`` instead of squeezing the codes into ``[0, 0.04]``.
    Observations pass through unchanged."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX  # the suite's own codes

        space = env.single_observation_space
        image = space["image"]
        high = np.broadcast_to(np.array([max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()),
                                         max(STATE_TO_IDX.values())], np.uint8), image.shape)
        self.single_observation_space = gym.spaces.Dict({**space.spaces, "image": gym.spaces.Box(
            0, high, image.shape, np.uint8)})
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    def observations(self, observations: Any) -> Any:
        return observations


def has_minigrid_image(space: gym.Space) -> bool:
    """A MiniGrid observation: a Dict whose ``image`` is a ``uint8`` ``[H, W, 3]`` Box declared up to 255."""
    image = space.spaces.get("image") if isinstance(space, gym.spaces.Dict) else None
    return (isinstance(image, gym.spaces.Box) and image.dtype == np.uint8 and image.shape[-1:] == (3,)
            and int(image.high.max()) == 255)
