"""Swamp-tour layouts: grid codes, task presets (:class:`SwampTourConfig`) and the layout generator.

The pieces that both the env (:mod:`recurl.envs.swamptour`) and the exact solver
(:mod:`recurl.envs.swamptour_solver`) build on, in a module of their own so that the env can use the
solver without an import cycle. Geometry and codes as in :mod:`recurl.envs.swamptour`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Cell codes of the original (1 is reserved for the agent and never written into the grid).
BLANK, WALL, GOAL, VISITED = 0, 2, 3, 4
# (dx, dy) per heading: up, left, down, right.
HEADING_VECTORS = np.array([[0, -1], [-1, 0], [0, 1], [1, 0]], dtype=np.int64)
TASKS = (
    "silent_ruin", "open_field", "many_swamp", "Tmaze_both", "Tmaze_either", "ruin_1swamp", "ruin_2swamp",
)

# Fixed maps: '#' wall, 'G' goal, '.' blank; row 0 at the top.
FIXED_MAPS: dict[str, tuple[str, ...]] = {
    "fixed_maze01": ("##G..", ".#..#", ".G..#", "###..", "#...S"),
    "Tmaze": ("#####", "G...G", "##.##", "##S##", "#####"),
    "Tmaze_left": ("#####", "#G..#", "##.##", "##S##", "#####"),
    "Tmaze_right": ("#####", "#..G#", "##.##", "##S##", "#####"),
}
MAZE_TYPES = ("random", "fixed_maze01", "Tmaze", "Tmaze_one")
_MAX_LAYOUT_ATTEMPTS = 100
_MAX_WALL_TRIES = 99


@dataclass(frozen=True)
class SwampTourConfig:
    """All layout and rule parameters of one task (spec section 2.2); every field is a constructor option.

    ``start_pos=None`` puts the agent at the centre ``(field_size // 2, field_size // 2)``, which is
    where every random task of the original starts. ``reachability`` is ``"sweep"`` (the original's
    row-major sweep, which rejects a few layouts that are in fact solvable) or ``"bfs"`` (exact).
    ``mask_walls`` (recurl's option, not the spec's) gives the env an ``action_masks()`` method that marks
    "forward" invalid when the agent faces a wall (or a visited goal under ``second_visit_penalty``):
    a masked agent never bumps, so it must still remember where it has been, but not where the walls are.
    """

    maze_type: str = "random"
    field_size: int = 5
    sight_size: int = 2
    max_time: int = 20
    n_goal: int = 2
    n_wall: int = 8
    start_pos: tuple[int, int] | None = None
    start_dir: int = 0
    reward_hit_wall: float = -0.2
    reward_move: float = -0.1
    reward_goal: float = 1.0
    second_visit_penalty: bool = False
    reset_after_subgoal: bool = True
    erase_visited_goal: bool = False
    wall_observable: bool = True
    step_until_goal_hidden: int = -1
    reachability: str = "sweep"
    timeout_terminal: bool = False
    mask_walls: bool = False

    def __post_init__(self) -> None:
        if self.maze_type not in MAZE_TYPES:
            raise ValueError(f"maze_type must be one of {MAZE_TYPES}, got {self.maze_type!r}")
        if self.reachability not in ("sweep", "bfs"):
            raise ValueError(f"reachability must be 'sweep' or 'bfs', got {self.reachability!r}")
        if self.maze_type != "random":
            fixed = _parse_map(FIXED_MAPS["Tmaze_left" if self.maze_type == "Tmaze_one" else self.maze_type])
            n_goal = int(np.count_nonzero(fixed == GOAL))
            if self.field_size != fixed.shape[0] or self.n_goal != n_goal:
                raise ValueError(
                    f"maze_type {self.maze_type!r} is a fixed {fixed.shape[0]}x{fixed.shape[0]} map with "
                    f"{n_goal} goal(s); field_size and n_goal cannot be changed"
                )
        x, y = self.start
        if not (0 <= x < self.field_size and 0 <= y < self.field_size):
            raise ValueError(f"start_pos {self.start} is outside the {self.field_size}-wide field")
        if self.sight_size < 0 or self.max_time < 1 or self.start_dir not in range(4):
            raise ValueError("need sight_size >= 0, max_time >= 1 and start_dir in 0..3")
        if self.maze_type == "random" and self.n_goal + self.n_wall >= self.field_size**2:
            raise ValueError("n_goal + n_wall must leave at least the start cell free")

    @property
    def start(self) -> tuple[int, int]:
        """Start cell ``(x, y)``."""
        if self.start_pos is None:
            return (self.field_size // 2, self.field_size // 2)
        return (int(self.start_pos[0]), int(self.start_pos[1]))

    @property
    def view_size(self) -> int:
        """Side ``2s+1`` of the egocentric window."""
        return 2 * self.sight_size + 1

    @property
    def obs_shape(self) -> tuple[int, int]:
        """``(2s+1, 2(2s+1))`` with the wall plane, ``(2s+1, 2s+1)`` without."""
        k = self.view_size
        return (k, 2 * k) if self.wall_observable else (k, k)


# Per-task presets (spec 2.3). Rewards and second_visit_penalty are the dataclass defaults for all tasks.
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "silent_ruin": dict(maze_type="fixed_maze01", field_size=5, sight_size=2, max_time=25, n_goal=2, n_wall=0,
                        start_pos=(4, 4), reset_after_subgoal=False, erase_visited_goal=True),
    "open_field": dict(field_size=5, sight_size=4, max_time=15, n_goal=1, n_wall=0, wall_observable=False),
    "many_swamp": dict(field_size=7, sight_size=2, max_time=30, n_goal=4, n_wall=4,
                       reset_after_subgoal=False, erase_visited_goal=True),
    "Tmaze_both": dict(maze_type="Tmaze", field_size=5, sight_size=3, max_time=20, n_goal=2, n_wall=0,
                       start_pos=(2, 3)),
    "Tmaze_either": dict(maze_type="Tmaze_one", field_size=5, sight_size=2, max_time=5, n_goal=1, n_wall=0,
                         start_pos=(2, 3), step_until_goal_hidden=2),
    "ruin_1swamp": dict(field_size=5, sight_size=2, max_time=10, n_goal=1, n_wall=8),
    "ruin_2swamp": dict(field_size=5, sight_size=2, max_time=20, n_goal=2, n_wall=8),
}


def make_config(task: str, **options: Any) -> SwampTourConfig:
    """Preset of ``task`` with ``options`` (any :class:`SwampTourConfig` field) overriding it.

    Changing ``field_size`` of a random task without giving ``start_pos`` keeps the start at the centre.
    """
    if task not in TASK_PRESETS:
        raise ValueError(f"unknown swamp-tour task {task!r}; choose from {TASKS}")
    fields = {f.name for f in dataclasses.fields(SwampTourConfig)}
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"unknown swamp-tour option(s) {sorted(unknown)}; valid: {sorted(fields)}")
    return SwampTourConfig(**{**TASK_PRESETS[task], **options})


@dataclass(frozen=True)
class Layout:
    """One episode's map: ``grid`` is ``(F, F)`` int8 cell codes indexed ``[y, x]``, plus the start pose."""

    grid: np.ndarray
    start_pos: tuple[int, int]
    start_dir: int


def _parse_map(rows: tuple[str, ...]) -> np.ndarray:
    codes = {"#": WALL, "G": GOAL, ".": BLANK, "S": BLANK}
    return np.array([[codes[c] for c in row] for row in rows], dtype=np.int8)


def _count_goals_sweep(grid: list[list[int]], start: tuple[int, int]) -> int:
    """Goals reachable from ``start`` by the original's row-major sweep (spec 2.3 QUIRK).

    The grid is copied with a one-cell blank border (only used to avoid bounds checks; border
    cells are marked but never expanded, yet marking them does raise the change flag). A goal
    first becomes "counted"; a counted cell turns "reached" without raising the flag, so a goal
    that can only be reached through another goal is sometimes missed.
    """
    reached, counted = 1, 5
    f, w = len(grid), len(grid) + 2
    m = [BLANK] * w + [c for row in grid for c in (BLANK, *row, BLANK)] + [BLANK] * w  # flat, padded
    m[(start[1] + 1) * w + start[0] + 1] = reached
    interior = [y * w + x for y in range(1, f + 1) for x in range(1, f + 1)]  # row-major
    offsets = (-w, -1, 1, w)  # up, left, right, down
    n_found, changed = 0, True
    while changed:
        changed = False
        for i in interior:
            if m[i] != reached:
                continue
            for o in offsets:
                j = i + o
                v = m[j]
                if v == BLANK:
                    m[j] = reached
                    changed = True
                elif v == GOAL:
                    m[j] = counted
                    n_found += 1
                    changed = True
                elif v == counted:
                    m[j] = reached
    return n_found


def _count_goals_bfs(grid: list[list[int]], start: tuple[int, int]) -> int:
    """Goals reachable from ``start`` through non-wall cells (4-neighbour BFS, goals passable)."""
    f = len(grid)
    seen = {start}
    queue = deque([start])
    while queue:
        x, y = queue.popleft()
        for dx, dy in HEADING_VECTORS.tolist():
            p = (x + dx, y + dy)
            if 0 <= p[0] < f and 0 <= p[1] < f and p not in seen and grid[p[1]][p[0]] != WALL:
                seen.add(p)
                queue.append(p)
    return sum(grid[y][x] == GOAL for x, y in seen)


def _cell_draws(rng: np.random.Generator, f: int) -> Iterator[list[int]]:
    """Endless uniform ``[x, y]`` draws, fetched 64 at a time (one generator call per cell is ~10x slower)."""
    while True:
        yield from rng.integers(f, size=(64, 2)).tolist()


def _place(grid: list[list[int]], draws: Iterator[list[int]], code: int, start: tuple[int, int],
           tries: int | None) -> None:
    """Put ``code`` on the first drawn cell that is blank and not the start (at most ``tries`` draws)."""
    n = 0
    while tries is None or n < tries:
        x, y = next(draws)
        if grid[y][x] == BLANK and (x, y) != start:
            grid[y][x] = code
            return
        n += 1
    raise RuntimeError(f"could not place a wall in {tries} tries; lower n_wall")


def generate_layout(rng: np.random.Generator, config: SwampTourConfig) -> Layout:
    """Draw one episode's layout (spec 2.3). Shared by the single and the vector env.

    Random maps: goals first, then walls (uniform cells, redrawn until blank and not the start), then
    the reachability check; the whole draw is repeated until every goal is reachable. ``Tmaze_one``
    draws one uniform number (> 0.5 selects the left goal). Fixed maps consume no randomness.
    """
    start = config.start
    if config.maze_type == "Tmaze_one":
        rows = FIXED_MAPS["Tmaze_left" if rng.random() > 0.5 else "Tmaze_right"]
        return Layout(_parse_map(rows), start, config.start_dir)
    if config.maze_type != "random":
        return Layout(_parse_map(FIXED_MAPS[config.maze_type]), start, config.start_dir)
    count = _count_goals_sweep if config.reachability == "sweep" else _count_goals_bfs
    draws = _cell_draws(rng, config.field_size)
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        grid = [[BLANK] * config.field_size for _ in range(config.field_size)]
        for _ in range(config.n_goal):
            _place(grid, draws, GOAL, start, None)
        for _ in range(config.n_wall):
            _place(grid, draws, WALL, start, _MAX_WALL_TRIES)
        if count(grid, start) == config.n_goal:
            return Layout(np.array(grid, dtype=np.int8), start, config.start_dir)
    raise RuntimeError(f"no layout with all goals reachable in {_MAX_LAYOUT_ATTEMPTS} tries; lower n_wall")

