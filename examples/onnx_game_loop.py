"""A game loop that runs an exported recurl agent with numpy and onnxruntime only (no torch, no recurl).

    recurl train --env recurl/TMaze-v0 --env-kwargs length 2 --run-dir runs/tmaze
    recurl export runs/tmaze --onnx tmaze.onnx
    python examples/onnx_game_loop.py tmaze.onnx --length 2 --episodes 100

The T-maze is re-implemented below in a few lines of numpy, for ``n_envs`` mazes played side by side.
The loop shows the whole deployment contract of an exported graph:

1. read the interface (input/output names, state shapes) from the model's ``recurl`` metadata;
2. start with zero state and ``is_first = 1`` for every env;
3. each step feed the raw observation, the state and ``is_first``; take ``action`` and the new state;
4. feed the new state back; set ``is_first = 1`` for an env whose episode just restarted (the graph
   zeroes that env's state itself, so the loop never touches the state arrays).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort


class TMazes:
    """``n`` passive T-mazes (recurl/TMaze-v0's rules): see the cue once, walk east, turn the cued way.

    Observation ``[cue_up, cue_down, in_corridor, at_junction]`` float32; actions 0 east, 1 up, 2 down.
    """

    def __init__(self, n: int, length: int, seed: int = 0) -> None:
        self.n, self.length, self.max_steps = n, length, 3 * length + 10
        self.rng = np.random.default_rng(seed)
        self.pos = np.zeros(n, np.int64)
        self.t = np.zeros(n, np.int64)
        self.cue = self.rng.integers(2, size=n)

    def obs(self) -> np.ndarray:
        o = np.zeros((self.n, 4), np.float32)
        first = self.t == 0
        o[first, self.cue[first]] = 1.0
        o[np.arange(self.n), np.where(self.pos == self.length, 3, 2)] = 1.0
        return o

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every maze; returns ``(done[n], success[n])`` and restarts the finished mazes."""
        self.t += 1
        at_junction = self.pos == self.length
        self.pos = np.where(action == 0, np.minimum(self.pos + 1, self.length), self.pos)
        turned = (action != 0) & at_junction
        success = turned & (action - 1 == self.cue)
        done = turned | (self.t >= self.max_steps)
        k = int(done.sum())
        self.pos[done], self.t[done], self.cue[done] = 0, 0, self.rng.integers(2, size=k)
        return done, success


def play(model_path: str, episodes: int, length: int, n_envs: int = 4, seed: int = 0) -> float:
    """Play ``episodes`` T-maze episodes (rounded up to a multiple of ``n_envs``); returns the success rate.

    Each maze plays an equal share, so quick (successful) episodes are not over-counted.
    """
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["recurl"])
    layers, _, hidden = meta["state_shape"]
    state = {name: np.zeros((layers, n_envs, hidden), np.float32) for name in meta["state_inputs"]}
    has_is_first = any(d["name"] == "is_first" for d in meta["inputs"])  # absent for memoryless cores
    is_first = np.ones(n_envs, np.float32)
    out_names = ["action", *meta["state_outputs"]]
    env = TMazes(n_envs, length, seed)
    quota = -(-episodes // n_envs)
    played = np.zeros(n_envs, np.int64)
    successes = 0
    while (played < quota).any():
        feed = {"obs": env.obs(), **state}
        if has_is_first:
            feed["is_first"] = is_first
        action, *new_state = sess.run(out_names, feed)
        state = dict(zip(meta["state_inputs"], new_state))  # the state goes back in, unchanged
        done, success = env.step(action)
        counted = done & (played < quota)
        successes += int((success & counted).sum())
        played += counted
        is_first = done.astype(np.float32)  # a restarted maze's next observation begins an episode
    return successes / int(played.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="ONNX file written by `recurl export RUN_DIR --onnx FILE`")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--length", type=int, default=2, help="corridor length the agent was trained on")
    p.add_argument("--n-envs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rate = play(a.model, a.episodes, a.length, a.n_envs, a.seed)
    print(f"success_rate={rate:.3f}")


if __name__ == "__main__":
    main()
