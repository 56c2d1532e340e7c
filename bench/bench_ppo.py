"""Training env steps/s of recurl's recurrent PPO on recurl/CartPoleNoVel-v1.

8 envs, 32-step chunks, LSTM 64 for actor and critic (rl-baselines3-zoo's settings), after a warm-up
update; min/median/max over repeats. The side-by-side comparison with sb3-contrib is
`python bench/bench_vs_sb3.py`.

    python bench/bench_ppo.py [--steps 10240] [--repeats 3]
"""

import argparse
import statistics

import torch
from bench_vs_sb3 import recurl_throughput  # a sibling script: python puts bench/ on sys.path

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10240)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    rates = [recurl_throughput(a.steps, seed) for seed in range(a.repeats)]
    print(f"recurl PPO, CartPoleNoVel-v1, 8 envs x 32 steps, LSTM 64 (actor + critic), {a.steps} steps:")
    print(f"  env steps/s  min {min(rates):.0f}  median {statistics.median(rates):.0f}  max {max(rates):.0f}")
