"""What every algorithm that trains a recurrent policy shares: acting, saving, loading, resuming.

``PolicyModel`` is acting (``predict`` with SB3's signature, actions to env actions, snapshots);
``Algorithm`` adds construction from a config, the run-directory format and resuming, once.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from recurl.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TRAINER_FILE,
    load_trainer_state,
    load_weights,
    read_json,
    save_trainer_state,
    save_weights,
    space_from_json,
    space_to_json,
    write_json,
)
from recurl.envs import make_vec_env
from recurl.errors import RecurlError
from recurl.nn.policy import RecurrentPolicy
from recurl.obs import ObsConverter
from recurl.util import pick_device, set_seed, set_threads


class PolicyModel:
    """Mixin for algorithms with ``policy``, ``device``, ``obs_conv`` and ``action_space`` attributes."""

    policy: RecurrentPolicy
    device: torch.device
    obs_conv: ObsConverter
    action_space: gym.Space

    def _env_action(self, action: torch.Tensor | np.ndarray) -> np.ndarray:
        """Policy actions -> env actions: Box actions clipped to bounds, discrete ones shifted by ``start``."""
        a = action.cpu().numpy() if isinstance(action, torch.Tensor) else action
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            return np.clip(a, space.low, space.high)
        if isinstance(space, gym.spaces.Discrete):
            return a + space.start if space.start else a
        if isinstance(space, gym.spaces.MultiDiscrete) and space.start.any():
            return a + space.start
        return a

    def _act(self, obs: Any, state: tuple, is_first: torch.Tensor) -> tuple[Any, tuple]:
        """One acting step of the policy (a hook: R2D2 passes its exploration epsilon)."""
        return self.policy.act(obs, state, is_first)

    # -- acting ------------------------------------------------------------------------------------------
    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Act on one observation or a batch, threading the recurrent state (SB3's signature).

        Args:
            observation: one observation (shape of the observation space) or a batch ``[N, ...]``.
            state: the state returned by the previous call (``None``: zero state, episode start).
            episode_start: ``[N]`` bools, true where ``observation`` starts a new episode.
        Returns ``(action, state)``: actions ``[N, ...]`` (or one action for an unbatched observation)
        and the new state, a tuple of ``[layers, N, H]`` float32 arrays.
        """
        obs, n, batched = self.obs_conv.from_user(observation, self.device)
        if state is None:
            torch_state = self.policy.initial_state(n, self.device)
        else:
            torch_state = tuple(torch.as_tensor(s, dtype=torch.float32, device=self.device) for s in state)
            expect = [(L, n, H) for L, _, H in self._state_shapes()]
            if [tuple(s.shape) for s in torch_state] != expect:
                raise RecurlError(f"state shapes {[tuple(s.shape) for s in torch_state]} do not match {n} "
                                  f"observation(s): expected {expect}; pass the state returned by the previous "
                                  "predict call, or None")
        if episode_start is None:
            is_first = torch.full((n,), state is None, dtype=torch.bool, device=self.device)
        else:
            is_first = torch.as_tensor(np.asarray(episode_start, bool).reshape(n), device=self.device)
        with torch.inference_mode():
            dist, new_state = self._act(obs, torch_state, is_first)
            action = dist.mode() if deterministic else dist.sample()
        a = self._env_action(action)
        return (a if batched else a[0]), tuple(s.cpu().numpy() for s in new_state)

    def _state_shapes(self) -> list[tuple[int, int, int]]:
        if not hasattr(self, "_shapes"):
            self._shapes = [tuple(s.shape) for s in self.policy.initial_state(1, "cpu")]
        return self._shapes

    def copy_policy(self) -> RecurrentPolicy:
        """A frozen copy of the current policy (e.g. a teacher or a snapshot for evaluation)."""
        return copy.deepcopy(self.policy).eval().requires_grad_(False)


class Algorithm(PolicyModel):
    """Construction, saving, loading and resuming, shared by every algorithm that trains a policy.

    A subclass sets ``algo`` (the name in ``config.json``) and ``config_class``, and implements
    ``_build(obs_space, action_space)`` (networks and optimizer), ``learn(run_dir=, progress=)``,
    ``_trainer_state()`` and ``_restore(state)`` (what resuming needs beyond the weights).
    ``_tensors`` / ``_load_tensors`` add tensors beyond ``policy.*`` (e.g. PPO's reward statistics).
    """

    algo: ClassVar[str]
    config_class: ClassVar[type]
    #: config fields reset when a saved model is loaded (e.g. a teacher that is not needed to act)
    load_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, env: str | None = None, config: Any = None, **overrides: Any) -> None:
        cfg = config or self.config_class()
        if env is not None:
            overrides["env"] = env
        if isinstance(overrides.get("policy"), dict):
            overrides["policy"] = dataclasses.replace(cfg.policy, **overrides["policy"])
        try:
            self.config = dataclasses.replace(cfg, **overrides)
        except TypeError as e:
            raise RecurlError(f"unknown {self.algo.upper()} option: {e}") from None
        self._prepare()
        self.device = pick_device(self.config.device)
        set_threads(self.config.threads)
        set_seed(self.config.seed)
        probe = self._make_env(1)
        self.observation_space = probe.single_observation_space
        self.action_space = probe.single_action_space
        probe.close()
        self._check_spaces()
        self._build(self.observation_space, self.action_space)

    # -- hooks -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Runs before the env is probed (e.g. BC reads its dataset here)."""

    def _check_spaces(self) -> None:
        """Runs once the env's spaces are known, before the networks are built."""

    def _make_env(self, n: int, render_mode: str | None = None) -> gym.vector.VectorEnv:
        cfg = self.config
        return make_vec_env(cfg.env, n, cfg.env_kwargs, getattr(cfg, "prev_action_reward", False), render_mode)

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"policy.{k}": v for k, v in self.policy.state_dict().items()}

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(_strip(tensors, "policy."))

    def _trainer_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (config, spaces, state shapes, versions)."""
        from recurl import __version__

        path = Path(path)
        save_weights(path / MODEL_FILE, self._tensors())
        write_json(path / CONFIG_FILE, {
            "algo": self.algo,
            "config": dataclasses.asdict(self.config),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "state_shapes": [list(s.shape) for s in self.policy.initial_state(1, "cpu")],
            "versions": {"recurl": __version__, "torch": torch.__version__, "gymnasium": gym.__version__},
        })

    def checkpoint(self, run_dir: str | Path) -> None:
        """Save the model plus everything needed to resume (optimizer, counters, RNG, ...), atomically."""
        run_dir = Path(run_dir)
        self.save(run_dir)
        save_trainer_state(run_dir / TRAINER_FILE, {**self._trainer_state(), "torch_rng": torch.get_rng_state()})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", **overrides: Any) -> Any:
        """Load a saved model directory (safetensors + JSON; no code from the files is executed)."""
        from recurl.algos import build_config

        path = Path(path)
        meta = read_json(path / CONFIG_FILE)
        if meta.get("algo") != cls.algo:
            raise RecurlError(f"{path} holds a {meta.get('algo')!r} model, not a {cls.algo} one")
        try:
            cfg = build_config(cls.config_class, {**meta["config"], **cls.load_overrides, "device": str(device),
                                                  **overrides})
            obs_space, action_space = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
        except (KeyError, TypeError, ValueError) as e:
            raise RecurlError(f"config.json in {path} does not match this recurl version ({e})") from None
        tensors = load_weights(path / MODEL_FILE)
        self = cls.__new__(cls)
        self.config = cfg
        self.device = pick_device(cfg.device)
        self.observation_space, self.action_space = obs_space, action_space
        self._loaded()
        self._build(obs_space, action_space)
        try:
            self._load_tensors(tensors)
        except (RuntimeError, KeyError) as e:
            raise RecurlError(f"corrupt or mismatched model file in {path}: {e}") from None
        return self

    def _loaded(self) -> None:
        """Runs on a loaded model before ``_build`` (set attributes ``__init__`` would have set)."""

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True) -> Any:
        """Continue a killed run from its last checkpoint up to its configured budget.

        Envs restart fresh episodes (env state is not saved); weights, optimizer, normalisers, counters
        and RNG continue where the checkpoint left them.
        """
        run_dir = Path(run_dir)
        self = cls.load(run_dir, device=read_json(run_dir / CONFIG_FILE)["config"].get("device", "auto"))
        set_threads(self.config.threads)
        state = load_trainer_state(run_dir / TRAINER_FILE)
        try:
            self._restore(state)
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise RecurlError(f"trainer state in {run_dir} does not fit this run ({e}): start a new run") from None
        return self.learn(run_dir=run_dir, progress=progress)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
