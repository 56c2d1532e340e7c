"""Watch a trained agent: text rendering in the terminal, or a GIF for envs that render images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from recurl.collector import Collector
from recurl.errors import RecurlError
from recurl.runs import load_model


def _frame(env) -> object:
    frame = env.render()
    return frame[0] if isinstance(frame, tuple | list) else frame


@torch.inference_mode()
def enjoy(run_dir: str | Path, episodes: int = 3, seed: int = 0, gif: str | None = None, fps: float = 4.0) -> None:
    """Play ``episodes`` deterministic episodes through the collector; print ANSI frames, or write ``gif``."""
    if episodes < 1:
        raise RecurlError(f"--episodes must be >= 1, got {episodes}")
    model = load_model(run_dir)
    mode = "rgb_array" if gif else "ansi"
    try:
        env = model.make_env(1, render_mode=mode)
    except (TypeError, ValueError) as e:
        raise RecurlError(f"{model.config.env} cannot render in {mode} mode ({e})") from None
    modes = env.metadata.get("render_modes", [])
    if mode not in modes:
        env.close()
        raise RecurlError(f"{model.config.env} has no {mode} rendering (it offers {modes or 'none'})")
    col = Collector(env, model.device, action_delay=model.action_delay, env_id=model.config.env,
                    masks=bool(model.config.policy.action_masks))
    col.reset(seed, model.policy.initial_act_state(1, model.device))
    frames, done = [], 0
    while done < episodes:
        if col.valid[0]:  # the autoreset step shows no new state: the episode already ended
            frame = _frame(env)
            if gif:
                frames.append(np.asarray(frame))
            else:
                sys.stdout.write(f"--- episode {done + 1}\n{frame}")
        dist, state = model.policy.act(col.obs, col.state, col.is_first, col.action_mask)
        step = col.step(dist.mode(), state)
        if step.finished.size:
            done += 1
            success = step.success(0)
            tail = f", success {success}" if success is not None else ""
            print(f"episode {done}: return {step.episode_returns[0]:.3f}{tail}")
    env.close()
    if gif:
        from PIL import Image

        images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        print(f"wrote {len(images)} frames to {gif}")
