"""Observation encoders: Box vectors, images, Discrete/MultiDiscrete and Dict spaces -> one feature vector.

Every encoder takes observations with any leading dims (``[B, ...]`` when acting, ``[T, B, ...]`` when
training) and returns ``[..., out_dim]`` float32 features.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.errors import RecurlError

Obs = torch.Tensor | dict[str, torch.Tensor]


def is_image(space: gym.Space) -> bool:
    """A ``uint8`` Box of rank 3 (HWC or CHW) is encoded with a CNN."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def is_normalisable(space: gym.Space) -> bool:
    """Float Box observations (not images) get running mean/std normalisation."""
    return isinstance(space, gym.spaces.Box) and not is_image(space) and np.issubdtype(space.dtype, np.floating)


class RunningNorm(nn.Module):
    """Running mean and variance of ``[..., *shape]`` inputs (parallel Welford), kept as buffers.

    The statistics are part of the state dict, so they are saved with the model and exported.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``x[N, *shape]`` into the statistics."""
        x = x.reshape(-1, *self.mean.shape).double()
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean.double()
        m2 = self.var.double() * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.copy_(self.mean.double() + delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


def mlp(sizes: list[int], activation: type[nn.Module], out_activation: bool = True) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each followed by ``activation`` (last one optional)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if out_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class _Flatten(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.nd = len(shape)
        self.out_dim = int(np.prod(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Skipping the no-op conversions keeps them out of the traced acting step (a few us per call).
        x = x if x.dtype == torch.float32 else x.float()
        if self.nd == 0:
            return x.unsqueeze(-1)
        return x if self.nd == 1 else x.flatten(start_dim=x.dim() - self.nd)


class _Embed(nn.Module):
    """(Multi)Discrete observations: one embedding table per component, concatenated."""

    def __init__(self, nvec: np.ndarray, start: np.ndarray, dim: int, scalar: bool) -> None:
        super().__init__()
        self.register_buffer("offset", torch.as_tensor(np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start))
        self.scalar = scalar  # Discrete obs have no component axis: [...] rather than [..., n]
        self.table = nn.Embedding(int(nvec.sum()), dim)
        self.out_dim = dim * len(nvec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scalar:
            x = x.unsqueeze(-1)
        return self.table(x.long() + self.offset).flatten(start_dim=-2)


class _CNN(nn.Module):
    """Small CNN for ``uint8`` images (HWC or CHW); scales each value by the space's upper bound to
    ``[0, 1]`` (``high`` 255 for pixels; MiniGrid's symbolic image declares its codes' bounds, see
    :class:`recurl.envs.wrappers.MiniGridImageBounds`)."""

    def __init__(self, shape: tuple[int, ...], features: int, high: np.ndarray | None = None) -> None:
        super().__init__()
        high = np.broadcast_to(np.asarray(255.0 if high is None else high, np.float32), shape)
        # from the space, not saved: a run stores its observation space and rebuilds this
        self.register_buffer("scale", torch.as_tensor(1.0 / np.maximum(high, 1.0)), persistent=False)
        self.hwc = shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)
        c, h, w = (shape[2], shape[0], shape[1]) if self.hwc else shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1, padding=1), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n = self.net(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, features), nn.ReLU())
        self.out_dim = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).float() * self.scale
        if self.hwc:
            x = x.permute(0, 3, 1, 2)
        return self.fc(self.net(x)).reshape(*lead, -1)


def _leaf(space: gym.Space, embed_dim: int, cnn_features: int) -> nn.Module:
    if is_image(space):
        return _CNN(space.shape, cnn_features, space.high)
    if isinstance(space, gym.spaces.Box | gym.spaces.MultiBinary):
        return _Flatten(tuple(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return _Embed(np.array([space.n]), np.array([space.start]), embed_dim, scalar=True)
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise RecurlError(f"unsupported observation space {space}: MultiDiscrete must be 1-D")
        return _Embed(space.nvec, space.start, embed_dim, scalar=False)
    raise RecurlError(
        f"unsupported observation space {space}: use Box, Discrete, MultiDiscrete, MultiBinary or a Dict of them "
        "(recurl's vector envs flatten Tuple and nested Dict observations into one)"
    )


class ObsEncoder(nn.Module):
    """Encode any supported observation space into ``[..., out_dim]`` features.

    Dict spaces encode each key (sorted) and concatenate. ``hidden`` adds an MLP torso after that.
    """

    def __init__(
        self,
        space: gym.Space,
        hidden: tuple[int, ...] = (),
        activation: type[nn.Module] = nn.Tanh,
        embed_dim: int = 16,
        cnn_features: int = 256,
    ) -> None:
        super().__init__()
        if isinstance(space, gym.spaces.Dict):
            self.keys: list[str] | None = sorted(space.spaces)
            self.leaves = nn.ModuleList([_leaf(space[k], embed_dim, cnn_features) for k in self.keys])
        else:
            self.keys = None
            self.leaves = nn.ModuleList([_leaf(space, embed_dim, cnn_features)])
        width = sum(leaf.out_dim for leaf in self.leaves)
        self.torso = mlp([width, *hidden], activation)
        self.out_dim = hidden[-1] if hidden else width

    def forward(self, obs: Obs) -> torch.Tensor:
        if self.keys is None:
            feats = self.leaves[0](obs)
        else:
            feats = torch.cat([leaf(obs[k]) for k, leaf in zip(self.keys, self.leaves)], dim=-1)
        return self.torso(feats)
