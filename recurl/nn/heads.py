"""Action heads: Discrete (categorical), MultiDiscrete (independent categoricals), Box (diagonal Gaussian).

A head maps features ``[..., H]`` to a :class:`ActionDist` over actions ``[...]`` (Discrete),
``[..., n]`` (MultiDiscrete) or ``[..., d]`` (Box).

Action masking (discrete heads): a bool ``mask[..., n]`` (MultiDiscrete: the components' masks
concatenated, sb3-contrib's convention) marks the valid actions. Invalid logits are set to
:data:`MASKED_LOGIT` before the softmax, so sampling, the mode, log-probabilities, entropy and KL all see
the masked distribution (an invalid action has probability exactly 0), and the valid actions keep their
relative probabilities.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from recurl.errors import RecurlError

#: The logit of a masked action: exp() underflows to exactly 0, and 0 * MASKED_LOGIT stays finite (no NaN
#: in the entropy, as -inf would give), sb3-contrib's choice.
MASKED_LOGIT = -1e8


def apply_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits[..., n]`` with the entries where ``mask[..., n]`` is false replaced by :data:`MASKED_LOGIT`."""
    return logits if mask is None else logits.masked_fill(~mask.to(torch.bool), MASKED_LOGIT)


class ActionDist:
    """The few things PPO needs from a policy distribution, with no argument validation overhead."""

    def __init__(self, kind: str, params: torch.Tensor, log_std: torch.Tensor | None = None,
                 splits: list[int] | None = None, mask: torch.Tensor | None = None) -> None:
        self.kind, self.params, self.log_std, self.splits = kind, params, log_std, splits
        if mask is not None and kind == "gaussian":
            raise RecurlError("action masks apply to Discrete and MultiDiscrete actions, not to a Box")
        if kind == "categorical":
            self.logits = torch.log_softmax(apply_mask(params, mask), -1)
        elif kind == "multi":
            self.logits_list = [torch.log_softmax(p, -1) for p in apply_mask(params, mask).split(splits, dim=-1)]

    def sample(self) -> torch.Tensor:
        if self.kind == "categorical":
            return torch.multinomial(self.logits.exp().reshape(-1, self.logits.shape[-1]), 1).view(
                self.logits.shape[:-1])
        if self.kind == "multi":
            return torch.stack([torch.multinomial(lg.exp().reshape(-1, lg.shape[-1]), 1).view(lg.shape[:-1])
                                for lg in self.logits_list], -1)
        return self.params + torch.randn_like(self.params) * self.log_std.exp()

    def mode(self) -> torch.Tensor:
        if self.kind == "categorical":
            return self.logits.argmax(-1)
        if self.kind == "multi":
            return torch.stack([lg.argmax(-1) for lg in self.logits_list], -1)
        return self.params

    def outputs(self) -> dict[str, torch.Tensor]:
        """What the ONNX graph returns beside the action: normalised ``logits`` (Discrete ``[B, n]``,
        MultiDiscrete the components' concatenated ``[B, sum(nvec)]``), or ``mean`` and ``log_std``
        (Box, ``[B, d]``)."""
        if self.kind == "categorical":
            return {"logits": self.logits}
        if self.kind == "multi":
            return {"logits": torch.cat(self.logits_list, -1)}
        return {"mean": self.params, "log_std": self.log_std.expand_as(self.params)}

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        if self.kind == "categorical":
            return self.logits.gather(-1, a.long().unsqueeze(-1)).squeeze(-1)
        if self.kind == "multi":
            return sum(lg.gather(-1, a[..., i].long().unsqueeze(-1)).squeeze(-1)
                       for i, lg in enumerate(self.logits_list))
        z = (a - self.params) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * np.log(2 * np.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        if self.kind == "categorical":
            return -(self.logits.exp() * self.logits).sum(-1)
        if self.kind == "multi":
            return sum(-(lg.exp() * lg).sum(-1) for lg in self.logits_list)
        return (self.log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1).expand(self.params.shape[:-1])

    def kl(self, other: ActionDist) -> torch.Tensor:
        """``KL(self || other)`` per sample, ``[...]``."""
        if self.kind == "categorical":
            return (self.logits.exp() * (self.logits - other.logits)).sum(-1)
        if self.kind == "multi":
            return sum((p.exp() * (p - q)).sum(-1) for p, q in zip(self.logits_list, other.logits_list))
        var_ratio = torch.exp(2 * (self.log_std - other.log_std))
        t = ((self.params - other.params) * torch.exp(-other.log_std)).pow(2)
        return 0.5 * (var_ratio + t - 1 - torch.log(var_ratio)).sum(-1)


class ActionHead(nn.Module):
    """``Linear(H -> action params)``; Box actions add a state-independent ``log_std`` parameter."""

    def __init__(self, space: gym.Space, in_dim: int, init_gain: float | None = 0.01) -> None:
        super().__init__()
        self.log_std: nn.Parameter | None = None
        self.splits: list[int] | None = None
        if isinstance(space, gym.spaces.Discrete):
            self.kind, n = "categorical", int(space.n)
        elif isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self.kind, self.splits = "multi", [int(k) for k in space.nvec]
            n = sum(self.splits)
        elif isinstance(space, gym.spaces.Box):
            self.kind, n = "gaussian", int(np.prod(space.shape))
            self.log_std = nn.Parameter(torch.zeros(n))
        else:
            raise RecurlError(f"unsupported action space {space}: use Discrete, 1-D MultiDiscrete or Box")
        self.linear = nn.Linear(in_dim, n)
        if init_gain is not None:
            nn.init.orthogonal_(self.linear.weight, init_gain)
            nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> ActionDist:
        """``h[..., H]`` (and the valid-action ``mask[..., n]``, discrete heads) -> the distribution."""
        return ActionDist(self.kind, self.linear(h), self.log_std, self.splits, mask)
