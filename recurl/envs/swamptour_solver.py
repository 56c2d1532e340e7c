"""Exact full-information solver for swamp-tour layouts, and optimum statistics per task.

:func:`solve` runs a breadth-first search over ``(cell, heading, set of collected goals)`` with the
env's own rules (bumps, teleport to the start pose after a non-final goal, visited goals passable
unless ``second_visit_penalty``). It gives the shortest number of steps that collects every goal.

:func:`revisit_plan` scores the best *memoryless* plan for two-goal teleport tasks (spec 5.3): walk
to goal A, get teleported, walk the same path to A again (a visited goal does not teleport), then
go on to B.

``python bench/swamptour_optima.py ruin_2swamp 4000`` prints the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recurl.envs.swamptour_layout import (
    GOAL,
    HEADING_VECTORS,
    VISITED,
    WALL,
    Layout,
    SwampTourConfig,
    generate_layout,
    make_config,
)


@dataclass(frozen=True)
class Solution:
    """Result of :func:`solve`.

    ``steps``: shortest number of steps collecting all goals (uncapped; ``None`` if impossible).
    ``goals_in_time``: most goals that can be collected on steps strictly before ``max_time``.
    """

    steps: int | None
    goals_in_time: int


class _Board:
    """A layout flattened with a one-cell wall border, for fast pure-Python searches.

    Cell index ``(y + 1) * width + (x + 1)``; ``moves[h]`` is the index step of heading ``h``.
    """

    def __init__(self, layout: Layout) -> None:
        f = layout.grid.shape[0]
        self.width = f + 2
        padded = np.full((f + 2, f + 2), WALL, dtype=np.int8)
        padded[1:-1, 1:-1] = layout.grid
        self.cells: list[int] = padded.ravel().tolist()
        self.moves = [int(dy) * self.width + int(dx) for dx, dy in HEADING_VECTORS]
        self.start = (layout.start_pos[1] + 1) * self.width + layout.start_pos[0] + 1
        self.start_dir = layout.start_dir
        goal_cells = [i for i, v in enumerate(self.cells) if v in (GOAL, VISITED)]
        self.goal_id = {c: k for k, c in enumerate(goal_cells)}
        # Goals already visited in the layout count as collected.
        self.initial_mask = sum(1 << k for k, c in enumerate(goal_cells) if self.cells[c] == VISITED)
        self.full_mask = (1 << len(goal_cells)) - 1


def solve(layout: Layout, config: SwampTourConfig) -> Solution:
    """Breadth-first search over ``(cell, heading, collected goals)``; see :class:`Solution`."""
    board = _Board(layout)
    cells, moves, goal_id, full = board.cells, board.moves, board.goal_id, board.full_mask
    visited_passable = config.erase_visited_goal or not config.second_visit_penalty
    n_states = len(cells) * 4
    start = (board.initial_mask * 4 + board.start_dir) * len(cells) + board.start
    if board.initial_mask == full:
        return Solution(0, bin(full).count("1"))
    seen = {start}
    frontier = [start]
    best_in_time = bin(board.initial_mask).count("1")
    depth = 0
    while frontier:
        depth += 1
        nxt = []
        for state in frontier:
            mask, rest = divmod(state, n_states)
            h, c = divmod(rest, len(cells))
            succ = [(mask * 4 + (h + 1) % 4) * len(cells) + c, (mask * 4 + (h - 1) % 4) * len(cells) + c]
            p = c + moves[h]
            v = cells[p]
            if v == WALL:
                pass  # bump: stays in place, no new state
            elif p in goal_id:
                bit = 1 << goal_id[p]
                if mask & bit:
                    if visited_passable:
                        succ.append((mask * 4 + h) * len(cells) + p)
                else:
                    m2 = mask | bit
                    if m2 == full:
                        in_time = bin(full).count("1") if depth < config.max_time else best_in_time
                        return Solution(depth, in_time)
                    if depth < config.max_time:
                        best_in_time = max(best_in_time, bin(m2).count("1"))
                    if config.reset_after_subgoal:
                        succ.append((m2 * 4 + board.start_dir) * len(cells) + board.start)
                    else:
                        succ.append((m2 * 4 + h) * len(cells) + p)
            else:
                succ.append((mask * 4 + h) * len(cells) + p)
            for s in succ:
                if s not in seen:
                    seen.add(s)
                    nxt.append(s)
        frontier = nxt
    return Solution(None, best_in_time)


def optimal_steps_for_layout(layout: Layout, config: SwampTourConfig) -> int:
    """Fewest steps to finish ``layout``, capped at ``config.max_time`` (the length of a time-out)."""
    steps = solve(layout, config).steps
    return config.max_time if steps is None else min(steps, config.max_time)


def optimal_steps(env_or_layout: Any, config: SwampTourConfig | None = None) -> int:
    """Optimal steps of an env's current layout (``SwampTourEnv``, wrapped or not) or of a :class:`Layout`.

    A layout needs ``config`` for the rules; an env supplies its own.
    """
    if isinstance(env_or_layout, Layout):
        if config is None:
            raise ValueError("optimal_steps(layout) needs the config for the rules")
        return optimal_steps_for_layout(env_or_layout, config)
    env = env_or_layout.unwrapped
    return optimal_steps_for_layout(env.layout, env.config)


def optimal_return(solution: Solution, config: SwampTourConfig) -> float:
    """Best achievable episode return given :func:`solve`'s result, time-out reward override included."""
    c = config
    if solution.steps is not None and solution.steps < c.max_time:
        return c.n_goal * c.reward_goal + (solution.steps - c.n_goal) * c.reward_move
    g = solution.goals_in_time
    return g * c.reward_goal + (c.max_time - 1 - g) * c.reward_move + c.reward_hit_wall


def _arrivals(board: _Board, start: int, start_dir: int, target: int,
              blocked: int | None) -> list[int | None]:
    """Fewest steps from pose ``(start, start_dir)`` to entering cell ``target``, per entering heading.

    Cell ``blocked`` (an uncollected goal that must not be touched) is avoided; every other non-wall
    cell is passable. Returns a list of 4 (``None`` where that heading cannot be used).
    """
    cells, moves = board.cells, board.moves
    best: list[int | None] = [None] * 4
    seen = {(start, start_dir)}
    frontier = [(start, start_dir)]
    depth = 0
    while frontier:
        depth += 1
        nxt = []
        for c, h in frontier:
            p = c + moves[h]
            if p == target:
                if best[h] is None:
                    best[h] = depth
                succ = [(c, (h + 1) % 4), (c, (h - 1) % 4)]
            elif cells[p] == WALL or p == blocked:
                succ = [(c, (h + 1) % 4), (c, (h - 1) % 4)]
            else:
                succ = [(c, (h + 1) % 4), (c, (h - 1) % 4), (p, h)]
            for s in succ:
                if s not in seen:
                    seen.add(s)
                    nxt.append(s)
        frontier = nxt
    return best


def revisit_plan(layout: Layout) -> int:
    """Best memoryless plan on a two-goal teleport layout: ``min_{A,h} 2·d(start→(A, h)) + d((A, h)→B)``.

    ``d(start→(A, h))`` enters goal A with heading ``h`` without touching B; the second walk repeats it
    (A is visited now, so the agent stays on it) and the last leg goes on to B with A passable.
    """
    board = _Board(layout)
    goals = list(board.goal_id)
    if len(goals) != 2:
        raise ValueError("revisit_plan needs exactly two goals")
    plans = []
    for a, b in (goals, goals[::-1]):
        for h, d1 in enumerate(_arrivals(board, board.start, board.start_dir, a, blocked=b)):
            if d1 is not None:
                d3 = min(d for d in _arrivals(board, a, h, b, blocked=None) if d is not None)
                plans.append(2 * d1 + d3)
    return min(plans)


def optimum_statistics(task: str, n_layouts: int = 4000, seed: int = 0, **options: Any) -> dict[str, float]:
    """Optimum over ``n_layouts`` layouts drawn by the env's own generator (seeded with ``seed``).

    Returns ``n``, ``mean``/``std`` of the optimal steps capped at ``max_time`` (an episode's
    length), ``mean_uncapped``, ``return_mean`` and ``unfinishable`` (fraction of layouts needing
    more than ``max_time`` steps). Two-goal teleport tasks add ``revisit_mean`` (uncapped) and
    ``revisit_unfinishable`` for the memoryless plan of :func:`revisit_plan`.
    """
    config = make_config(task, **options)
    rng = np.random.default_rng(seed)
    uncapped, returns, revisit = [], [], []
    two_goal = config.n_goal == 2 and config.reset_after_subgoal
    for _ in range(n_layouts):
        layout = generate_layout(rng, config)
        sol = solve(layout, config)
        uncapped.append(np.inf if sol.steps is None else sol.steps)
        returns.append(optimal_return(sol, config))
        if two_goal:
            revisit.append(revisit_plan(layout))
    raw = np.array(uncapped, dtype=np.float64)
    capped = np.minimum(raw, config.max_time)
    stats: dict[str, float] = {
        "n": n_layouts,
        "mean": float(capped.mean()),
        "std": float(capped.std()),
        "mean_uncapped": float(raw.mean()),
        "return_mean": float(np.mean(returns)),
        "unfinishable": float(np.mean(raw > config.max_time)),
    }
    if two_goal:
        rev = np.array(revisit, dtype=np.float64)
        stats["revisit_mean"] = float(rev.mean())
        stats["revisit_unfinishable"] = float(np.mean(rev > config.max_time))
    return stats

