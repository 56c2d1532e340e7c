"""Watch a trained agent: text rendering in the terminal, or a GIF for envs that render images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from recurl.errors import RecurlError
from recurl.obs import ObsConverter
from recurl.runs import load_model


def _frame(env) -> object:
    frame = env.render()
    return frame[0] if isinstance(frame, tuple | list) else frame


@torch.inference_mode()
def enjoy(run_dir: str | Path, episodes: int = 3, seed: int = 0, gif: str | None = None, fps: float = 4.0) -> None:
    """Play ``episodes`` deterministic episodes; print ANSI frames, or write them to ``gif``."""
    model = load_model(run_dir)
    mode = "rgb_array" if gif else "ansi"
    try:
        env = model._make_env(1, render_mode=mode)
    except (TypeError, ValueError) as e:
        raise RecurlError(f"{model.config.env} cannot render in {mode} mode ({e})") from None
    modes = env.metadata.get("render_modes", [])
    if mode not in modes:
        env.close()
        raise RecurlError(f"{model.config.env} has no {mode} rendering (it offers {modes or 'none'})")
    conv = ObsConverter(env.single_observation_space)
    frames = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        state = model.policy.initial_state(1, model.device)
        is_first = torch.ones(1, dtype=torch.bool, device=model.device)
        total, done = 0.0, False
        while not done:
            frame = _frame(env)
            if gif:
                frames.append(np.asarray(frame))
            else:
                sys.stdout.write(f"--- episode {ep + 1}\n{frame}")
            dist, state = model.policy.act(conv.to_torch(obs, model.device), state, is_first)
            obs, reward, term, trunc, info = env.step(model._env_action(dist.mode()))
            is_first[:] = False
            total += float(reward[0])
            done = bool(term[0] or trunc[0])
        success = info.get("success")
        tail = f", success {bool(success[0])}" if success is not None else ""
        print(f"episode {ep + 1}: return {total:.3f}{tail}")
    env.close()
    if gif:
        from PIL import Image

        images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        print(f"wrote {len(images)} frames to {gif}")
