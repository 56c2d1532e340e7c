"""What every algorithm shares, written once: construction, acting, the learn API, saving, loading, resuming."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from recurl.acting import TracedAct
from recurl.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    TRAINER_FILE,
    SavedRun,
    encode_json,
    encode_trainer_state,
    encode_weights,
    read_run,
    space_to_json,
    write_checkpoint,
)
from recurl.collector import Collector, env_action, mask_source
from recurl.envs import make_vec_env, resolve_env_id
from recurl.errors import RecurlError
from recurl.evaluation import EvalCallback, evaluate_policy, new_eval_record
from recurl.nn.recurrent import State
from recurl.obs import ObsConverter, check_is_first, check_mask, check_state, user_tensor
from recurl.util import pick_device, set_seed, set_threads
from recurl.version import __version__

Callback = Callable[[Any], Any]
"""Called as ``callback(model)`` after every update (PPO: each rollout's update; R2D2: each vector-env
step; BC: each epoch); returning ``False`` stops training."""


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


class Algorithm:
    """What every algorithm shares: construction, acting (``predict``), learning, saving, loading, resuming.

    The same API for PPO, R2D2 and BC (SB3's shape): ``Algo(env=None, config=None, **overrides)``,
    ``learn(total_steps=None, callback=None, reset_num_timesteps=True, progress_bar=True, run_dir=None)``
    (a second call continues training), ``predict``, ``save``, ``Algo.load``, ``Algo.resume``.

    A subclass sets ``algo`` (the name in ``config.json``) and ``config_class``, and implements
    ``_build(obs_space, action_space)`` (networks and optimizer), ``_train(run_dir, progress_bar,
    callbacks)`` (the loop, until :meth:`_target` is reached), ``_algo_state()`` and ``_restore_algo(state)``
    (what resuming needs beyond weights, optimizer and counters). ``_tensors`` / ``_load_tensors`` add
    tensors beyond ``policy.*`` (e.g. PPO's reward statistics).
    """

    algo: ClassVar[str]
    config_class: ClassVar[type]
    #: config fields reset when a saved model is loaded (e.g. a teacher that is not needed to act)
    load_overrides: ClassVar[dict[str, Any]] = {}
    #: what ``policy.ortho_init = None`` means for this algorithm
    ortho_init_default: ClassVar[bool] = True
    policy: Any
    optimizer: torch.optim.Optimizer
    obs_conv: ObsConverter
    observation_space: gym.Space
    action_space: gym.Space
    device: torch.device
    num_timesteps: int = 0
    n_updates: int = 0
    #: ``(first, last)`` value of the step counter in the current learn call (resume continues it)
    _span: tuple[int, int] = (0, 0)
    #: index of this process's first env among all envs of a run (a rollout worker's share; 0 otherwise):
    #: env ``i`` here resets with the seed env ``env_offset + i`` of one process holding all envs would get
    env_offset: int = 0
    #: progress of the scheduled evaluations (:class:`~recurl.evaluation.EvalCallback`)
    eval_record: dict[str, Any]

    def __init__(self, env: str | None = None, config: Any = None, **overrides: Any) -> None:
        cfg = config or self.config_class()
        if env is not None:
            overrides["env"] = env
        try:
            if isinstance(overrides.get("policy"), dict):
                overrides["policy"] = dataclasses.replace(cfg.policy, **overrides["policy"])
            self.config = dataclasses.replace(cfg, **overrides)
        except TypeError as e:
            raise RecurlError(f"unknown {self.algo.upper()} option: {e}") from None
        self._prepare()
        self.eval_record = new_eval_record()
        # The caller's id may name the module that registers it (Gymnasium's module:EnvId): import it here,
        # once, and keep the registered id, so config.json names no module (runs are read back strictly).
        # A dataset's id (behaviour cloning) was refused on reading if it named one.
        spaces = self._dataset_spaces()
        if spaces is None:
            self.config = dataclasses.replace(self.config, env=resolve_env_id(self.config.env, allow_import=True))
        self.device = pick_device(self.config.device)
        set_threads(self.config.threads)
        set_seed(self.config.seed)
        if spaces is None:
            probe = self.make_env(1)
            self.observation_space = probe.single_observation_space
            self.action_space = probe.single_action_space
            self._resolve_masks(mask_source(probe))
            probe.close()
        else:  # learned from a dataset alone (Melee replays): no env to probe, act or evaluate in
            self.observation_space, self.action_space = spaces
            self._resolve_masks(None)
        if getattr(self.config.policy, "ortho_init", False) is None:  # the algorithm's own default
            self.config = dataclasses.replace(self.config, policy=dataclasses.replace(
                self.config.policy, ortho_init=self.ortho_init_default))
        self._check_spaces()
        self._build(self.observation_space, self.action_space)

    def _resolve_masks(self, source: str | None) -> None:
        """``policy.action_masks`` None -> whether the env has masks; true without masks is an error."""
        want = self.config.policy.action_masks
        if want and source is None:
            raise RecurlError(f"--action-masks true, but {self.config.env} has no action masks (an action_masks() "
                              "method or an action_mask observation key)")
        if want is None:
            self.config = dataclasses.replace(self.config, policy=dataclasses.replace(
                self.config.policy, action_masks=source is not None))

    @property
    def masked(self) -> bool:
        """Whether the policy acts with action masks (then ``predict``, the Agent and ONNX take them)."""
        return bool(self.config.policy.action_masks)

    # -- acting ------------------------------------------------------------------------------------------
    @property
    def action_delay(self) -> int:
        """Steps between choosing an action and executing it (behaviour cloning's ``action_delay``; else 0)."""
        return int(getattr(self.config, "action_delay", 0))

    def _act(self, obs: Any, state: State, is_first: torch.Tensor | None,
             mask: torch.Tensor | None) -> tuple[Any, State]:
        """One acting step of the policy (a hook: R2D2 passes its exploration epsilon)."""
        return self.policy.act(obs, state, is_first, mask)

    @functools.cached_property
    def _traced_act(self) -> TracedAct:
        """``predict``'s acting step, traced per call shape (:mod:`recurl.acting`; :meth:`_act` where it cannot
        be): the policy is built once, and the traces share its parameters, so they follow training."""
        return TracedAct(self.policy, self.observation_space, self.action_space, self.masked, eager=self._act)

    @functools.cached_property
    def act_state_shapes(self) -> list[tuple[int, int]]:
        """``(layers, H)`` of each acting-state tensor (``predict`` checks a user's state against them on
        every call; the policy is built once, so they are computed once)."""
        return [(s.shape[0], s.shape[2]) for s in self.policy.initial_act_state(1, "cpu")]

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Act on one observation or a batch, threading the recurrent state (SB3's signature).

        Args:
            observation: one observation (shape of the observation space) or a batch ``[N, ...]``.
            state: the state returned by the previous call (``None``: zero state, episode start).
            episode_start: ``[N]`` bools, true where ``observation`` starts a new episode.
            action_masks: ``[N, n]`` bools, the valid actions (sb3-contrib's MaskablePPO argument); needed
                when the policy was trained with masks.
        Returns ``(action, state)``: actions ``[N, ...]`` (or one action for an unbatched observation) and
        the new state, the actor's tensors as float32 arrays ``[layers, N, H]`` (named by
        ``policy.act_state_names``; the same state as :meth:`recurl.Agent.act` and the ONNX graph carry).
        A model with an ``action_delay`` returns the action chosen now, to be executed that many steps
        later (:class:`recurl.Agent` and evaluation run the delay queue for you).
        """
        obs, n, batched = self.obs_conv.from_user(observation, self.device)
        if state is None:
            torch_state = self.policy.initial_act_state(n, self.device)
        else:
            torch_state = tuple(user_tensor(s, torch.float32, self.device)
                                for s in check_state(state, self.act_state_shapes, n))
        # No episode start (or a zero state, where a reset changes nothing): the core skips the reset.
        is_first = None
        if episode_start is not None:
            first = check_is_first(episode_start, n, "episode_start")
            if state is not None and first.any():
                is_first = torch.as_tensor(first, device=self.device)
        mask = check_mask(action_masks, n, self.action_space, self.masked)
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
        with torch.inference_mode():
            action, new_state = self._traced_act(obs, torch_state, is_first, mask, deterministic)
        a = env_action(self.action_space, action)
        on_cpu = self.device.type == "cpu"
        return (a if batched else a[0]), tuple(s.numpy() if on_cpu else s.cpu().numpy() for s in new_state)

    def summarize(self, episodes: int, seed: int = 10_000) -> dict[str, Any]:
        """The final evaluation of a run (``summary.json``): ``episodes`` deterministic episodes from ``seed``
        (:func:`recurl.evaluation.evaluate_policy`); a model without an env reports on held-out data."""
        result = evaluate_policy(self, n_episodes=episodes, seed=seed)
        return {k: v for k, v in result.items() if not isinstance(v, list)}

    def copy_policy(self) -> Any:
        """A frozen copy of the current policy (e.g. a teacher or a snapshot for evaluation)."""
        return copy.deepcopy(self.policy).eval().requires_grad_(False)

    # -- learning ----------------------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None, callback: Callback | list[Callback] | None = None,
              reset_num_timesteps: bool = True, progress_bar: bool = True,
              run_dir: str | Path | None = None) -> Any:
        """Train for ``total_steps`` more env steps (default: the config's ``total_steps``).

        A second call continues training from where the first stopped (weights, optimizer, normalisers,
        episodes in flight). ``reset_num_timesteps=False`` also continues the step counter (and so the
        x-axis of the logs); ``True`` (SB3's default) restarts it at 0. ``callback`` (or a list of them)
        runs after every update; returning ``False`` stops. ``run_dir`` receives logs and checkpoints.
        """
        steps = check_budget(self.config.total_steps if total_steps is None else total_steps)
        if reset_num_timesteps:
            self.num_timesteps = 0
        self.config = dataclasses.replace(self.config, total_steps=steps)  # config.json records the budget
        self._span = (self.num_timesteps, self.num_timesteps + steps)
        self.eval_record = new_eval_record() | {"last_step": self.num_timesteps}
        self._train(run_dir, progress_bar, as_callbacks(callback) + self._scheduled(run_dir),
                    fresh=reset_num_timesteps)
        return self

    def _scheduled(self, run_dir: str | Path | None) -> list[Callback]:
        """The config's own callbacks: periodic evaluation and stopping when solved (``--eval-every``,
        ``--stop-at-return``, ``--hold``), after the user's."""
        cfg = self.config
        if getattr(cfg, "eval_every", 0) < 1:
            return []
        return [EvalCallback(cfg.eval_every, cfg.eval_episodes, cfg.stop_at_return, cfg.hold, run_dir)]

    def _budget(self) -> int:
        """The length of a learn call's span, from the config (what a resumed run continues to)."""
        return int(self.config.total_steps)

    def _progress(self) -> float:
        """Fraction of the current learn call done, in [0, 1] (learning-rate and clip schedules)."""
        start, end = self._span
        return min(1.0, max(0.0, (self.num_timesteps - start) / max(end - start, 1)))

    def _train(self, run_dir: str | Path | None, progress_bar: bool, callbacks: list[Callback],
               fresh: bool) -> None:
        """The training loop, from ``num_timesteps`` up to ``_span[1]``; ``fresh`` restarts the envs."""
        raise NotImplementedError

    def _fresh_collector(self, state: Any) -> Collector:
        """Close the envs in use and step ``num_envs`` new ones from ``state`` (a resumed run restarts its
        episodes: env state is not saved), keeping the recent-episode window of a resumed run."""
        cfg = self.config
        if getattr(self, "collector", None) is not None:
            self.collector.env.close()
        self.collector = Collector(self.make_env(cfg.num_envs), self.device, env_id=cfg.env, masks=self.masked)
        if getattr(self, "stats_history", None):
            self.collector.stats.load(self.stats_history)
        self.collector.reset(cfg.seed + 7919 * self.n_updates + self.env_offset, state)
        return self.collector

    def make_env(self, n: int, render_mode: str | None = None) -> gym.vector.VectorEnv:
        """``n`` copies of the config's env as one vector env (NEXT_STEP autoreset)."""
        cfg = self.config
        if self._dataset_spaces() is not None:
            raise RecurlError(f"this {self.algo} model learned from a dataset alone and has no env to run in: "
                              "evaluate it on held-out data instead (docs/melee.md)")
        return make_vec_env(cfg.env, n, cfg.env_kwargs, getattr(cfg, "prev_action_reward", False), render_mode)

    # -- hooks -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Runs before the env is probed (e.g. BC reads its dataset here)."""

    def _dataset_spaces(self) -> tuple[gym.Space, gym.Space] | None:
        """The spaces of a model that has no env (it learns from a dataset alone), else ``None``."""
        return None

    def _meta(self) -> dict[str, Any]:
        """Extra entries of ``config.json`` (e.g. a dataset split and the baselines' statistics)."""
        return {}

    def _check_spaces(self) -> None:
        """Runs once the env's spaces are known, before the networks are built."""

    def _build(self, obs_space: gym.Space, action_space: gym.Space) -> None:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"policy.{k}": v for k, v in self.policy.state_dict().items()}

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(_strip(tensors, "policy."))

    def _trainer_state(self) -> dict[str, Any]:
        """Everything resuming needs beyond the weights: optimizer, counters, the learn call's span."""
        return {"optimizer": self.optimizer.state_dict(), "num_timesteps": self.num_timesteps,
                "n_updates": self.n_updates, "span": list(self._span), "eval_record": dict(self.eval_record),
                **self._algo_state()}

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_timesteps, self.n_updates = int(state["num_timesteps"]), int(state["n_updates"])
        self._span = (int(state["span"][0]), int(state["span"][1]))
        self.eval_record = {**new_eval_record(), **state.get("eval_record", {})}
        self._restore_algo(state)

    def _algo_state(self) -> dict[str, Any]:
        return {}

    def _restore_algo(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_algo_state` saved."""

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (config, spaces, state shapes, versions) as one
        atomic checkpoint set; files of an earlier checkpoint there (``trainer.pt``) are removed."""
        write_checkpoint(path, _model_files(self))

    def checkpoint(self, run_dir: str | Path) -> None:
        """Save the model plus everything needed to resume (optimizer, counters, RNG, ...) as one atomic set."""
        state = {**self._trainer_state(), "torch_rng": torch.get_rng_state()}
        write_checkpoint(run_dir, {**_model_files(self), TRAINER_FILE: encode_trainer_state(state)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", **overrides: Any) -> Any:
        """Load a saved model directory (safetensors + JSON; no code from the files is executed), with
        ``load_overrides`` applied (a loaded model acts: it needs no teacher)."""
        return _from_saved(cls, Path(path), read_run(path), {**cls.load_overrides, "device": str(device), **overrides})

    def _loaded(self) -> None:
        """Runs on a loaded model before ``_build`` (set attributes ``__init__`` would have set; the saved
        ``config.json`` is in ``self.saved_meta``)."""

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True, total_steps: int | None = None) -> Any:
        """Continue a killed run from its last checkpoint up to its configured budget.

        Envs restart fresh episodes (env state is not saved); weights, optimizer, normalisers, counters
        and RNG continue where the checkpoint left them.
        """
        run_dir = Path(run_dir)
        saved = read_run(run_dir, trainer_keys=_TRAINER_KEYS)
        # The run's full config, without load_overrides: a resumed run keeps its objective (PPO's teacher).
        self = _from_saved(cls, run_dir, saved, {})
        set_threads(self.config.threads)
        state = saved.trainer_state
        try:
            self._restore(state)
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RecurlError(f"trainer state {run_dir / TRAINER_FILE} does not fit this run ({e}): start a new "
                              "run") from None
        if total_steps is not None:  # extend (never shorten) the run's budget
            if not hasattr(self.config, "total_steps"):
                raise RecurlError(f"--total-steps does not apply to a {cls.algo} run (it counts no env steps)")
            if check_budget(total_steps) < self.num_timesteps:
                raise RecurlError(f"--total-steps {total_steps} is below the {self.num_timesteps} steps already "
                                  f"done in {run_dir}")
            self.config = dataclasses.replace(self.config, total_steps=int(total_steps) - self._span[0])
        self._span = (self._span[0], self._span[0] + self._budget())
        self._train(run_dir, progress, self._scheduled(run_dir), fresh=True)
        return self


def check_budget(steps: Any, minimum: int = 1) -> int:
    """A ``learn`` budget must be an integer ``>= minimum``; anything else (``-100``, ``1.5``, ``True``) is a
    :class:`RecurlError`, not a silent no-op."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < minimum:
        raise RecurlError(f"total_steps must be an integer >= {minimum}, got {steps!r}")
    return int(steps)


def as_callbacks(callback: Callback | list[Callback] | None) -> list[Callback]:
    """``None``, one callback or a list of them -> a list."""
    if callback is None:
        return []
    return list(callback) if isinstance(callback, list | tuple) else [callback]


#: what ``trainer.pt`` must hold for :meth:`Algorithm._restore` (each algorithm's own keys come on top)
_TRAINER_KEYS = ("optimizer", "num_timesteps", "n_updates", "span", "torch_rng")


def _model_files(model: Algorithm) -> dict[str, bytes]:
    """``model.safetensors`` and ``config.json`` of ``model``, serialised (written together by the caller)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "algo": model.algo,
        "config": dataclasses.asdict(model.config),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "state_shapes": [list(s.shape) for s in model.policy.initial_act_state(1, "cpu")],
        "versions": {"recurl": __version__, "torch": torch.__version__, "gymnasium": gym.__version__},
        **model._meta(),
    }
    return {MODEL_FILE: encode_weights(model._tensors()), CONFIG_FILE: encode_json(meta)}


def _from_saved(cls: type[Algorithm], path: Path, saved: SavedRun, overrides: dict[str, Any]) -> Any:
    """A ``cls`` model rebuilt from a saved run: its saved config with ``overrides``, networks, tensors."""
    if saved.meta["algo"] != cls.algo:
        raise RecurlError(f"{path} holds a {saved.meta['algo']!r} model, not a {cls.algo} one")
    try:
        cfg = build_config(cls.config_class, {**saved.meta["config"], **overrides})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RecurlError(f"{path / CONFIG_FILE} does not match this recurl version ({e})") from None
    self = cls.__new__(cls)
    self.config = cfg
    self.eval_record = new_eval_record()
    self.device = pick_device(cfg.device)
    self.observation_space, self.action_space = saved.observation_space, saved.action_space
    self.saved_meta = saved.meta
    self._loaded()
    self._build(saved.observation_space, saved.action_space)
    try:
        self._load_tensors(saved.tensors)
    except (RuntimeError, KeyError) as e:
        raise RecurlError(f"corrupt or mismatched model file in {path}: {e}") from None
    return self


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
