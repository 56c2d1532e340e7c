"""Swamp-tour (池巡り) grid tasks: collect goals in a small field seen through an egocentric window.

Re-implemented from the written spec in ``shared/specs/swamptour.md`` (the original code has no
license). Seven tasks: ``silent_ruin``, ``open_field``, ``many_swamp``, ``Tmaze_both``,
``Tmaze_either``, ``ruin_1swamp`` and ``ruin_2swamp``.

Geometry: positions are ``(x, y)`` with ``y = 0`` at the top; headings ``0`` up, ``1`` left,
``2`` down, ``3`` right. Actions: ``0`` forward, ``1`` turn left ``(h + 1) % 4``, ``2`` turn right
``(h - 1) % 4``.

Observation: ``float32`` array of shape ``(2s+1, 2(2s+1))`` = ``[goal plane | wall plane]`` (or
``(2s+1, 2s+1)`` when walls are not observed), cropped around the agent and rotated so that the
heading points to row 0. Outside the field reads as wall. Visited goals look like unvisited ones.

The simulation is written once for a batch of ``N`` copies (:class:`_SwampBatch`): the single env
runs it with ``N = 1`` and :class:`SwampTourVectorEnv` with ``N = num_envs``, so both are equal step
for step under the same seeds. Grid codes, task presets and the layout generator live in
:mod:`recurl.envs.swamptour_layout` (shared with the solver) and are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

# The layout names stay importable from here, where the env's users have always found them.
from recurl.envs.swamptour_layout import (
    BLANK,
    GOAL,
    HEADING_VECTORS,
    TASKS,
    VISITED,
    WALL,
    Layout,
    SwampTourConfig,
    generate_layout,
    make_config,
)
from recurl.envs.swamptour_solver import optimal_steps_for_layout

N_ACTIONS = 3


def _window_indices(sight: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column offsets into the padded grid for each heading: two ``(4, 2s+1, 2s+1)`` int arrays.

    ``rot90`` is applied to index grids, so gathering with them is the crop followed by the rotation
    that brings the heading to row 0 (up: k=0, left: k=3, down: k=2, right: k=1).
    """
    k = 2 * sight + 1
    rows, cols = np.indices((k, k))
    rot = [(-h) % 4 for h in range(4)]
    return (np.stack([np.rot90(rows, r) for r in rot]) - sight,
            np.stack([np.rot90(cols, r) for r in rot]) - sight)


class _SwampBatch:
    """State and dynamics of ``n`` independent swamp-tour episodes, stepped with one numpy call.

    The grid is stored padded with a wall border of width ``max(s, 1)``: outside the field then
    bumps like a wall and reads as wall (1 in W, 0 in G), exactly as the spec requires, without
    bounds checks. Positions ``x, y`` are in padded coordinates.
    """

    def __init__(self, config: SwampTourConfig, n: int, compute_optimal: bool) -> None:
        self.config = config
        self.n = n
        self.pad = max(config.sight_size, 1)
        size = config.field_size + 2 * self.pad
        self.grid = np.full((n, size, size), WALL, dtype=np.int8)
        self.x = np.zeros(n, dtype=np.int64)
        self.y = np.zeros(n, dtype=np.int64)
        self.heading = np.zeros(n, dtype=np.int64)
        self.time = np.zeros(n, dtype=np.int64)
        self.visited = np.zeros(n, dtype=np.int64)
        # Last step's events, for the agent colour in renders.
        self.bump = np.zeros(n, dtype=bool)
        self.goal_collected = np.zeros(n, dtype=bool)
        self.timed_out = np.zeros(n, dtype=bool)
        self.layouts: list[Layout | None] = [None] * n
        self._rows, self._cols = _window_indices(config.sight_size)
        self._solve: Callable[[Layout, SwampTourConfig], int] | None = None
        if compute_optimal:
            self._solve = optimal_steps_for_layout

    def reset_one(self, i: int, rng: np.random.Generator) -> dict[str, Any]:
        """Start a new episode in slot ``i``; returns its reset info (``optimal_steps`` if enabled)."""
        layout = generate_layout(rng, self.config)
        p, f = self.pad, self.config.field_size
        self.grid[i, p : p + f, p : p + f] = layout.grid
        self.x[i], self.y[i] = layout.start_pos[0] + p, layout.start_pos[1] + p
        self.heading[i] = layout.start_dir
        self.time[i] = self.visited[i] = 0
        self.bump[i] = self.goal_collected[i] = self.timed_out[i] = False
        self.layouts[i] = layout
        return {} if self._solve is None else {"optimal_steps": self._solve(layout, self.config)}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``actions`` (``(n,)`` ints in 0..2) to all slots, in the spec's order (2.4).

        Returns ``reward (n,) float64, terminated (n,) bool, truncated (n,) bool``; the event flags
        are left in ``self.bump`` / ``self.goal_collected`` / ``self.timed_out``.
        """
        c = self.config
        idx = np.arange(self.n)
        forward = actions == 0
        dx, dy = HEADING_VECTORS[self.heading].T
        nx, ny = self.x + dx, self.y + dy
        cell = self.grid[idx, ny, nx]
        blocked = (cell == WALL) | ((cell == VISITED) if c.second_visit_penalty else False)
        bump = forward & blocked
        goal = forward & (cell == GOAL)
        reward = np.where(bump, c.reward_hit_wall, c.reward_move)
        reward[goal] = c.reward_goal
        self.grid[idx[goal], ny[goal], nx[goal]] = BLANK if c.erase_visited_goal else VISITED
        self.visited += goal
        finished = goal & (self.visited >= c.n_goal)
        teleport = goal & ~finished & c.reset_after_subgoal
        moves = forward & ~bump & ~teleport
        self.x = np.where(moves, nx, self.x)
        self.y = np.where(moves, ny, self.y)
        self.heading = (self.heading + (actions == 1) - (actions == 2)) % 4
        if teleport.any():
            self.x[teleport] = c.start[0] + self.pad
            self.y[teleport] = c.start[1] + self.pad
            self.heading[teleport] = c.start_dir
        self.time += 1
        timeout = self.time >= c.max_time
        # QUIRK kept from the original: the time-out step reward is overwritten, even on a final goal.
        reward[timeout] = c.reward_hit_wall
        terminated = finished | (timeout & c.timeout_terminal)
        self.bump, self.goal_collected, self.timed_out = bump, goal, timeout
        return reward, terminated, timeout & ~terminated

    def action_masks(self) -> np.ndarray:
        """``(n, 3)`` bool: the valid actions now; "forward" (0) is invalid when it would bump."""
        dx, dy = HEADING_VECTORS[self.heading].T
        cell = self.grid[np.arange(self.n), self.y + dy, self.x + dx]
        blocked = (cell == WALL) | ((cell == VISITED) if self.config.second_visit_penalty else False)
        masks = np.ones((self.n, N_ACTIONS), dtype=bool)
        masks[:, 0] = ~blocked
        return masks

    def goal_hidden(self) -> np.ndarray:
        """``(n,)`` bool: whether the goal plane is blanked at the current time."""
        hide_at = self.config.step_until_goal_hidden
        return self.time >= hide_at if hide_at > 0 else np.zeros(self.n, dtype=bool)

    def observe(self) -> np.ndarray:
        """Egocentric observations of all slots: ``(n, *config.obs_shape)`` float32 in {0, 1}."""
        k = self.config.view_size
        rows = self.y[:, None, None] + self._rows[self.heading]
        cols = self.x[:, None, None] + self._cols[self.heading]
        win = self.grid[np.arange(self.n)[:, None, None], rows, cols]
        obs = np.zeros((self.n, *self.config.obs_shape), dtype=np.float32)
        obs[:, :, :k] = (win == GOAL) | (win == VISITED)
        obs[self.goal_hidden(), :, :k] = 0.0
        if self.config.wall_observable:
            obs[:, :, k:] = win == WALL
        return obs

    def step_info(self, i: int) -> dict[str, Any]:
        """Per-step info of slot ``i`` as Python scalars."""
        return {
            "goal_collected": bool(self.goal_collected[i]),
            "bump": bool(self.bump[i]),
            "goals_visited": int(self.visited[i]),
            "success": bool(self.visited[i] >= self.config.n_goal),
        }

    def render_rgb(self, i: int, obs: np.ndarray, cell: int = 40) -> np.ndarray:
        """Field (left) and egocentric view (right) of slot ``i``: ``(H, W, 3)`` uint8."""
        c = self.config
        f, p = c.field_size, self.pad
        field = self.grid[i, p : p + f, p : p + f]
        if self.goal_hidden()[i]:
            field = np.where((field == GOAL) | (field == VISITED), BLANK, field)
        palette = {BLANK: (40, 160, 60), WALL: (120, 20, 20), GOAL: (30, 60, 220), VISITED: (140, 180, 255)}
        left = np.zeros((f * cell, f * cell, 3), dtype=np.uint8)
        for code, colour in palette.items():
            left[np.kron(field == code, np.ones((cell, cell), dtype=bool))] = colour
        left[::cell] = left[:, ::cell] = 0  # grid lines
        agent = (255, 60, 60) if self.bump[i] or self.timed_out[i] else (255, 255, 255)
        if self.goal_collected[i]:
            agent = (60, 255, 60)
        _draw_agent(left, int(self.x[i]) - p, int(self.y[i]) - p, int(self.heading[i]), cell, agent)
        # View panel: each plane a square as tall as the field, grey 1 / black 0, agent facing up.
        k = c.view_size
        vcell = max(f * cell // k, 4)
        planes = [obs[:, j * k : (j + 1) * k] for j in range(obs.shape[1] // k)]
        panels = []
        for plane in planes:
            img = np.kron(plane, np.ones((vcell, vcell)))[..., None] * np.array([160, 160, 160])
            img = img.astype(np.uint8)
            img[::vcell] = img[:, ::vcell] = 60
            _draw_agent(img, c.sight_size, c.sight_size, 0, vcell, (255, 255, 255))
            panels += [img, np.zeros((k * vcell, 4, 3), dtype=np.uint8)]
        right = np.concatenate(panels[:-1], axis=1)
        height = max(left.shape[0], right.shape[0])
        bar = np.zeros((height, 8, 3), dtype=np.uint8)
        bar[:] = (0, 220, 220)  # cyan separator as in the original
        return np.concatenate([_pad_to(left, height), bar, _pad_to(right, height)], axis=1)

    def render_ansi(self, i: int, obs: np.ndarray) -> str:
        """Text picture of slot ``i``: field (``#`` wall, ``G`` goal, ``g`` visited, arrow agent) and view."""
        c = self.config
        f, p = c.field_size, self.pad
        field = self.grid[i, p : p + f, p : p + f]
        hidden = bool(self.goal_hidden()[i])
        chars = {BLANK: ".", WALL: "#", GOAL: "." if hidden else "G", VISITED: "." if hidden else "g"}
        lines = [[chars[int(v)] for v in row] for row in field]
        lines[int(self.y[i]) - p][int(self.x[i]) - p] = "^<v>"[int(self.heading[i])]
        view = [" ".join(".#"[int(v)] if j >= c.view_size else ".G"[int(v)] for j, v in enumerate(row))
                for row in obs]
        event = "bump" if self.bump[i] else "goal!" if self.goal_collected[i] else ""
        head = f"t={int(self.time[i])}/{c.max_time} goals={int(self.visited[i])}/{c.n_goal} {event}".rstrip()
        width = 2 * f
        body = [
            (" ".join(lines[r]) if r < f else "").ljust(width) + "   " + (view[r] if r < len(view) else "")
            for r in range(max(f, len(view)))
        ]
        legend = "field".ljust(width) + "   view: goal plane" + (" | wall plane" if c.wall_observable else "")
        return "\n".join([head, legend, *body]) + "\n"


def _draw_agent(img: np.ndarray, x: int, y: int, heading: int, cell: int,
                colour: tuple[int, int, int]) -> None:
    """Circle with a dark heading dot, drawn in place into the cell ``(x, y)`` of ``img``."""
    yy, xx = np.mgrid[0:cell, 0:cell] - (cell - 1) / 2
    patch = img[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell]
    patch[xx**2 + yy**2 <= (0.35 * cell) ** 2] = colour
    dx, dy = HEADING_VECTORS[heading] * 0.22 * cell
    patch[(xx - dx) ** 2 + (yy - dy) ** 2 <= (0.1 * cell) ** 2] = (20, 20, 20)


def _pad_to(img: np.ndarray, height: int) -> np.ndarray:
    return np.concatenate([img, np.zeros((height - img.shape[0], *img.shape[1:]), dtype=img.dtype)], axis=0)


def _observation_space(config: SwampTourConfig) -> gym.spaces.Box:
    return gym.spaces.Box(0.0, 1.0, shape=config.obs_shape, dtype=np.float32)


class SwampTourEnv(gym.Env[np.ndarray, np.int64]):
    """One swamp-tour task as a Gymnasium env.

    Args:
        task: one of :data:`TASKS`.
        render_mode: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (``(H, W, 3)`` uint8: field | view).
        compute_optimal: solve each layout at reset (exact BFS) and report ``info["optimal_steps"]``.
        **options: any :class:`SwampTourConfig` field, e.g. ``field_size``, ``sight_size``, ``n_goal``,
            ``n_wall``, ``max_time``, ``timeout_terminal`` (report the time-out as ``terminated`` like
            the original instead of ``truncated``).

    Observation: ``Box(0, 1, config.obs_shape, float32)``; action: ``Discrete(3)``.
    Step info: ``goal_collected``, ``bump``, ``goals_visited``, ``success`` (all goals collected).
    Reset info: ``optimal_steps`` (when ``compute_optimal``).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 5}

    def __init__(self, task: str = "ruin_2swamp", render_mode: str | None = None,
                 compute_optimal: bool = True, **options: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.task = task
        self.config = make_config(task, **options)
        self.render_mode = render_mode
        self.observation_space = _observation_space(self.config)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._batch = _SwampBatch(self.config, 1, compute_optimal)
        self._obs: np.ndarray | None = None
        if self.config.mask_walls:  # only then does the env have masks (recurl detects the method)
            self.action_masks = lambda: self._batch.action_masks()[0]

    @property
    def layout(self) -> Layout:
        """The current episode's layout as drawn at reset (before any goal was collected)."""
        if self._batch.layouts[0] is None:
            raise RuntimeError("call reset() first")
        return self._batch.layouts[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a new layout; returns the first observation ``config.obs_shape`` and the reset info."""
        super().reset(seed=seed)
        info = self._batch.reset_one(0, self.np_random)
        self._obs = self._batch.observe()[0]
        return self._obs, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step; ``action`` in {0 forward, 1 turn left, 2 turn right}."""
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        reward, terminated, truncated = self._batch.step(np.array([action], dtype=np.int64))
        self._obs = self._batch.observe()[0]
        return self._obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._batch.step_info(0)

    def render(self) -> np.ndarray | str | None:
        """``rgb_array``: ``(H, W, 3)`` uint8; ``ansi``: a string; ``None`` without a render mode."""
        if self.render_mode is None or self._obs is None:
            return None
        if self.render_mode == "ansi":
            return self._batch.render_ansi(0, self._obs)
        return self._batch.render_rgb(0, self._obs)

    def get_keys_to_action(self) -> dict[tuple[str, ...], int]:
        """Keyboard map for :func:`recurl.play.play`: w/e forward, a/s turn left, d/f turn right."""
        return {("w",): 0, ("e",): 0, ("a",): 1, ("s",): 1, ("d",): 2, ("f",): 2}


class SwampTourVectorEnv(VectorEnv):
    """``num_envs`` swamp-tour episodes stepped in one batched numpy call (NEXT_STEP autoreset).

    Equal step for step to ``SyncVectorEnv`` over :class:`SwampTourEnv` with the same seeds: sub-env
    ``i`` is seeded with ``seed + i`` and draws its layouts from its own generator in the same order.
    The step after an episode ended resets that sub-env, ignores its action, and returns reward 0,
    ``terminated = truncated = False`` and the new first observation with the reset info.

    Observations: ``(num_envs, *config.obs_shape)`` float32. Infos: dicts of ``(num_envs,)`` arrays
    with ``_key`` masks (step keys for stepped sub-envs, ``optimal_steps`` for reset ones).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 5,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, task: str = "ruin_2swamp", render_mode: str | None = None,
                 compute_optimal: bool = True, **options: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.num_envs = num_envs
        self.task = task
        self.config = make_config(task, **options)
        self.render_mode = render_mode
        self.single_observation_space = _observation_space(self.config)
        self.single_action_space = gym.spaces.Discrete(N_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._batch = _SwampBatch(self.config, num_envs, compute_optimal)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        if self.config.mask_walls:
            self.action_masks = self._batch.action_masks

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs (int ``seed``: sub-env ``i`` gets ``seed + i``); obs ``(N, *obs_shape)``."""
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            infos = self._add_info(infos, self._batch.reset_one(i, self._rngs[i]), i)
        self._autoreset[:] = False
        self._obs = self._batch.observe()
        return self._obs.copy(), infos

    def step(self, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step with ``actions (N,)``; returns obs ``(N, *obs_shape)`` and rewards/flags/infos ``(N,)``."""
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        stepped = ~self._autoreset
        # Finished sub-envs are stepped too (cheaper than masking); their reset below overwrites the state.
        reward, terminated, truncated = self._batch.step(actions)
        b = self._batch
        infos: dict[str, Any] = {}
        if stepped.any():  # like SyncVectorEnv, a key appears only when some sub-env reports it
            for key, value in (("goal_collected", b.goal_collected), ("bump", b.bump),
                               ("goals_visited", b.visited), ("success", b.visited >= self.config.n_goal)):
                infos[key] = np.where(stepped, value, 0).astype(value.dtype)
                infos[f"_{key}"] = stepped.copy()
        for i in np.flatnonzero(self._autoreset):
            infos = self._add_info(infos, b.reset_one(i, self._rngs[i]), i)
        reward[self._autoreset] = 0.0
        terminated[self._autoreset] = truncated[self._autoreset] = False
        self._autoreset = terminated | truncated
        self._obs = b.observe()
        return self._obs.copy(), reward, terminated, truncated, infos

    def render(self) -> tuple[Any, ...] | None:
        """One frame per sub-env (see :meth:`SwampTourEnv.render`), or ``None`` without a render mode."""
        if self.render_mode is None or self._obs is None:
            return None
        draw = self._batch.render_ansi if self.render_mode == "ansi" else self._batch.render_rgb
        return tuple(draw(i, self._obs[i]) for i in range(self.num_envs))


def register_swamptour() -> None:
    """Register ``recurl/SwampTour-<task>-v0`` for the seven tasks (single and vector entry points).

    Idempotent: ids already in ``gymnasium.registry`` are left alone.
    """
    for task in TASKS:
        env_id = f"recurl/SwampTour-{task}-v0"
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="recurl.envs.swamptour:SwampTourEnv",
            vector_entry_point="recurl.envs.swamptour:SwampTourVectorEnv",
            kwargs={"task": task},
        )
