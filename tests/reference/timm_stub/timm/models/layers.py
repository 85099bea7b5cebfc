"""Stand-in for `timm.models.layers`: `DropPath`, `to_2tuple` and `trunc_normal_`."""

from __future__ import annotations

import collections.abc

import torch
from torch import nn


def to_2tuple(value):
    """Return `value` as a tuple: an iterable (other than a string) as is, anything else twice."""
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        return tuple(value)
    return (value, value)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Fill `tensor` in place from N(mean, std**2) truncated to [a, b] (absolute bounds, as in timm)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """Zero the whole residual branch of each sample with probability `drop_prob` (stochastic depth).

    Outside training, or at `drop_prob` 0, `x` is returned unchanged. Surviving samples are divided by
    the keep probability when `scale_by_keep` is set, so the expected output equals `x`.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob

    # One Bernoulli draw per sample, broadcast over all other axes.
    per_sample_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(per_sample_shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        keep.div_(keep_prob)
    return x * keep


class DropPath(nn.Module):
    """Stochastic depth on a residual branch, per sample (see `drop_path`)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
