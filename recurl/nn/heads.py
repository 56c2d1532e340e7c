"""Action heads: Discrete (categorical), MultiDiscrete (independent categoricals, or a chain of them),
Box (diagonal Gaussian).

A head maps features ``[..., H]`` to a :class:`ActionDist` over actions ``[...]`` (Discrete),
``[..., n]`` (MultiDiscrete) or ``[..., d]`` (Box). :class:`AutoregressiveHead` gives MultiDiscrete
actions whose components depend on each other (a game controller: which stick direction goes with a
button): component ``i`` is drawn from ``p(a_i | h, a_0 .. a_{i-1})``.

Action masking (discrete heads): a bool ``mask[..., n]`` (MultiDiscrete: the components' masks
concatenated, sb3-contrib's convention) marks the valid actions. Invalid logits are set to
:data:`MASKED_LOGIT` before the softmax, so sampling, the mode, log-probabilities, entropy and KL all see
the masked distribution (an invalid action has probability exactly 0), and the valid actions keep their
relative probabilities.
"""

from __future__ import annotations

from typing import Any

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


def inverse_cdf(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The category ``[...]`` whose cumulative probability first exceeds ``u[..., 1]`` in ``[0, 1)``, for
    the log-probabilities ``logp[..., n]``: a sample of the categorical when ``u ~ U(0, 1)``. Plain cumsum
    and compare, so an exported graph can sample from noise it is given. Counting only the first ``n - 1``
    sums keeps the result below ``n`` where rounding leaves the total under ``u``, with no clamp (the
    acting step is dispatch-bound: every op counts)."""
    return (torch.cumsum(logp.exp(), -1)[..., :-1] < u).sum(-1)


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

    def sample_with(self, u: torch.Tensor) -> torch.Tensor:
        """A sample driven by given noise ``u[..., k]`` (:func:`noise_width`): ``U(0, 1)`` per component for
        discrete actions (inverse CDF), standard normal per dimension for a Box."""
        if self.kind == "categorical":
            return inverse_cdf(self.logits, u[..., :1])
        if self.kind == "multi":
            return torch.stack([inverse_cdf(lg, u[..., i : i + 1]) for i, lg in enumerate(self.logits_list)], -1)
        return self.params + u * self.log_std.exp()

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


class AutoregressiveDist:
    """A chain of categoricals over MultiDiscrete actions ``[..., k]``: ``p(a) = prod_i p(a_i | h, a_<i)``.

    ``log_prob(a)`` is teacher-forced (every conditional reads the given earlier components) and is exact.
    ``sample`` and ``mode`` draw the components in order (``mode`` is the greedy chain, the argmax of each
    conditional given the earlier argmaxes, not the joint argmax). ``entropy`` and ``kl`` have no closed
    form: they are the sums of the conditionals' entropies (KLs) along one sample of this distribution, an
    unbiased one-sample estimate of the joint entropy (KL), with gradients through the conditionals.
    """

    kind = "autoregressive"

    def __init__(self, head: AutoregressiveHead, h: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.head, self.h = head, h
        self._greedy_chain: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.masks = None if mask is None else list(mask.to(torch.bool).split(head.nvec, dim=-1))

    def conditional(self, i: int, prefix: list[torch.Tensor]) -> torch.Tensor:
        """Log-probabilities ``[..., n_i]`` of component ``i`` given the earlier components ``prefix``."""
        logits = self.head.logits(i, self.h, prefix)
        return torch.log_softmax(apply_mask(logits, None if self.masks is None else self.masks[i]), -1)

    def _chain(self, pick: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw the components in order with ``pick(i, log_probs) -> [...]``; returns the action and the
        conditionals along it."""
        prefix: list[torch.Tensor] = []
        conds = []
        for i in range(len(self.head.nvec)):
            lp = self.conditional(i, prefix)
            conds.append(lp)
            prefix.append(pick(i, lp))
        return torch.stack(prefix, -1), conds

    def sample(self) -> torch.Tensor:
        def draw(_: int, lp: torch.Tensor) -> torch.Tensor:
            return torch.multinomial(lp.detach().exp().reshape(-1, lp.shape[-1]), 1).view(lp.shape[:-1])

        return self._chain(draw)[0]

    def sample_with(self, u: torch.Tensor) -> torch.Tensor:
        """A sample driven by given noise ``u[..., k]``, ``U(0, 1)`` per component (inverse CDF of each
        conditional in turn)."""
        return self._chain(lambda i, lp: inverse_cdf(lp, u[..., i : i + 1]))[0]

    def _greedy(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._greedy_chain is None:  # once: the mode and the exported logits share it
            self._greedy_chain = self._chain(lambda _, lp: lp.argmax(-1))
        return self._greedy_chain

    def mode(self) -> torch.Tensor:
        return self._greedy()[0]

    def outputs(self) -> dict[str, torch.Tensor]:
        """For the ONNX graph: the conditionals' log-probabilities along the greedy chain, concatenated
        ``[B, sum(nvec)]``."""
        return {"logits": torch.cat(self._greedy()[1], -1)}

    def forced(self, a: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced conditionals: component ``i``'s log-probabilities ``[..., n_i]`` given ``a[..., :i]``."""
        prefix = [a[..., i].long() for i in range(a.shape[-1])]
        return [self.conditional(i, prefix[:i]) for i in range(len(self.head.nvec))]

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        return sum(lp.gather(-1, a[..., i].long().unsqueeze(-1)).squeeze(-1) for i, lp in enumerate(self.forced(a)))

    def entropy(self) -> torch.Tensor:
        with torch.no_grad():
            a = self.sample()
        return sum(-(lp.exp() * lp).sum(-1) for lp in self.forced(a))

    def kl(self, other: AutoregressiveDist) -> torch.Tensor:
        """One-sample estimate of ``KL(self || other)`` per sample, ``[...]``."""
        with torch.no_grad():
            a = self.sample()
        return sum((p.exp() * (p - q)).sum(-1) for p, q in zip(self.forced(a), other.forced(a), strict=True))


class AutoregressiveHead(nn.Module):
    """MultiDiscrete actions as a chain: component ``i``'s logits are ``MLP_i([h, e_0(a_0) .. e_{i-1}(a_{i-1})])``.

    Args:
        space: a 1-D ``MultiDiscrete`` with ``k`` components.
        in_dim: H, the width of the features.
        embed_dim: width of each earlier component's embedding.
        hidden: hidden width of each component's MLP.
    """

    def __init__(self, space: gym.Space, in_dim: int, embed_dim: int = 16, hidden: int = 128) -> None:
        super().__init__()
        if not (isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1):
            raise RecurlError(f"an autoregressive head needs a 1-D MultiDiscrete action space, not {space}")
        self.nvec = [int(n) for n in space.nvec]
        self.embeds = nn.ModuleList([nn.Embedding(n, embed_dim) for n in self.nvec[:-1]])
        self.nets = nn.ModuleList([
            nn.Sequential(nn.Linear(in_dim + i * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, n))
            for i, n in enumerate(self.nvec)])

    def logits(self, i: int, h: torch.Tensor, prefix: list[torch.Tensor]) -> torch.Tensor:
        """Unnormalised logits ``[..., n_i]`` of component ``i`` from ``h[..., H]`` and ``prefix`` (``i`` long
        tensors ``[...]``, the earlier components)."""
        x = torch.cat([h, *(self.embeds[j](a) for j, a in enumerate(prefix[:i]))], -1) if i else h
        return self.nets[i](x)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> AutoregressiveDist:
        return AutoregressiveDist(self, h, mask)


def noise_width(space: gym.Space) -> int:
    """Noise values one sample of a ``space`` action takes (:meth:`ActionDist.sample_with`): 1 for Discrete,
    one per component of a MultiDiscrete, one per dimension of a Box."""
    if isinstance(space, gym.spaces.Discrete):
        return 1
    if isinstance(space, gym.spaces.MultiDiscrete):
        return len(space.nvec)
    return int(np.prod(space.shape))
