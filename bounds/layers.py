"""Small layers the native engine understands besides torch's own."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Elementwise affine normalization y = (x - mean) / std.

    ``mean`` and ``std`` are buffers broadcastable to the input (without the
    batch dimension), e.g. running observation statistics or pixel scaling
    (mean 0, std 255). ``std`` must be positive.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.get_default_dtype())
        std_t = torch.as_tensor(std, dtype=torch.get_default_dtype())
        if (std_t <= 0).any() or not torch.isfinite(std_t).all():
            raise ValueError("Normalize: std must be positive and finite")
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}"
