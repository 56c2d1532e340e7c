"""Sine in, cosine out: why a recurrent model needs more than one time step per sample.

The input is ``x_t = sin(t)``, the target ``y_t = cos(t)``. One value of ``sin`` is reached on the way up
(cos > 0) and on the way down (cos < 0), so ``cos(t)`` is *not* a function of ``sin(t)``: a model that
sees one step per sample can only predict the average, 0, and its squared error flatlines at
``E[cos^2] = 0.5``. Two ways out, both trained here with recurl's :class:`~recurl.nn.recurrent.RecurrentCore`:

- **windows**: each sample is the last ``k >= 2`` inputs (``sin(t-1), sin(t)`` tell up from down);
- **a stateful core**: an LSTM reads one long sequence chunk by chunk, its state carried (detached)
  from chunk to chunk (truncated BPTT), so at every step it has seen the past.

Run ``python examples/sine_to_cosine.py --plot sine_to_cosine.png``: it prints the three final losses
and writes a plot of the loss curves and of each model's predictions.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from recurl.nn.recurrent import RecurrentCore

DT = 0.1  # time between samples: one period of sin is ~63 steps


def series(n: int, phase: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin(t), cos(t))`` at ``t = phase + DT * i`` for ``i < n``, each ``[n]``."""
    t = phase + DT * torch.arange(n, dtype=torch.float32)
    return torch.sin(t), torch.cos(t)


class Model(nn.Module):
    """``core`` then a linear read-out: ``x[T, B, F] -> y[T, B]``."""

    def __init__(self, kind: str, inputs: int, hidden: int = 32) -> None:
        super().__init__()
        self.core = RecurrentCore(kind, inputs, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...], is_first: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        y, state = self.core.unroll(x, state, is_first)
        return self.out(y).squeeze(-1), state


def train_windows(k: int, steps: int, n: int = 2000) -> tuple[list[float], Model]:
    """Memoryless model on windows of the last ``k`` inputs (``k = 1``: one time step per sample)."""
    x, y = series(n)
    windows = x.unfold(0, k, 1)  # [n - k + 1, k]: window i ends at step i + k - 1
    target = y[k - 1 :]
    model = Model("none", k)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(windows), (128,))
        pred, _ = model(windows[idx][None], (), torch.ones(1, 128, dtype=torch.bool))  # T=1, B=128
        loss = (pred[0] - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, model


def train_stateful(steps: int, chunk: int = 20, batch: int = 16) -> tuple[list[float], Model]:
    """LSTM over ``batch`` long sequences (random phases), ``chunk`` steps per update, state carried on."""
    model = Model("lstm", 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    phases = torch.rand(batch) * 2 * np.pi
    x, y = torch.stack([torch.stack(series(chunk * steps, float(p))) for p in phases], -1)  # [T_all, B]
    state = model.core.initial_state(batch)
    is_first = torch.zeros(chunk, batch, dtype=torch.bool)
    is_first[0] = True  # only the very first chunk starts the sequences; later chunks continue them
    losses = []
    for i in range(steps):
        sl = slice(i * chunk, (i + 1) * chunk)
        pred, state = model(x[sl, :, None], state, is_first if i == 0 else torch.zeros_like(is_first))
        state = tuple(s.detach() for s in state)  # truncated BPTT: keep the memory, cut the gradient
        loss = (pred - y[sl]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, model


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--plot", default="sine_to_cosine.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    runs = {"one step per sample": train_windows(1, a.steps), "windows of 2 steps": train_windows(2, a.steps),
            "stateful LSTM, chunks of 20": train_stateful(a.steps)}
    final = {name: float(np.mean(losses[-50:])) for name, (losses, _) in runs.items()}
    for name, loss in final.items():
        print(f"{name:30s} final MSE {loss:.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (losses, _) in runs.items():
        ax1.plot(losses, label=name)
    ax1.axhline(0.5, color="grey", ls=":", label="E[cos²] = 0.5")
    ax1.set(yscale="log", xlabel="update", ylabel="MSE", title="training loss")
    ax1.legend(fontsize=8)
    x, y = series(150, phase=1.0)
    ax2.plot(y, "k", lw=3, alpha=0.3, label="cos(t) target")
    with torch.no_grad():
        for name, (_, model) in runs.items():
            if model.core.kind == "none":
                k = model.core.input_size
                pred, _ = model(x.unfold(0, k, 1)[None], (), torch.ones(1, 151 - k, dtype=torch.bool))
                ax2.plot(range(k - 1, 150), pred[0], label=name)
            else:  # one value at a time, the state carried from step to step
                state, preds = model.core.initial_state(1), []
                for t in range(150):
                    out, state = model(x[t].view(1, 1, 1), state, torch.tensor([[t == 0]]))
                    preds.append(float(out))
                ax2.plot(preds, label=name)
    ax2.set(xlabel="step", title="predictions on a new sequence")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=100)
    print(f"wrote {a.plot}")
    plt.close(fig)
    return final


if __name__ == "__main__":
    main()
