"""Specification (C) matrices: which linear functions of the outputs to bound."""

from __future__ import annotations

import torch


def margin_spec(labels: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """C of shape (B, K, K) with row j = e_label - e_j (row label is all zeros).

    ``C f(x)`` then holds the margins f_label(x) - f_j(x); lower bounds > 0 on
    every row j != label certify that ``label`` stays the argmax.
    """
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer action indices in [0, {num_outputs}); got dtype "
            f"{str(labels.dtype).removeprefix('torch.')}"
        )
    labels = labels.long().reshape(-1)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_outputs):
        raise ValueError(
            f"labels must lie in [0, {num_outputs}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    eye = torch.eye(num_outputs, device=labels.device)
    C = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K)
    return C


def check_spec(C: torch.Tensor, batch: int, out_dim: int,
               known_finite: bool = False) -> torch.Tensor:
    """Validate a user-given C: (B, m, out_dim), finite (the scan for NaN / inf is
    skipped for a C built here, e.g. by :func:`margin_spec`: ``known_finite``)."""
    if not isinstance(C, torch.Tensor):
        C = torch.as_tensor(C, dtype=torch.get_default_dtype())
    if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != out_dim:
        raise ValueError(
            f"C must have shape (B={batch}, m, out_dim={out_dim}); got {tuple(C.shape)}"
        )
    if not known_finite and not torch.isfinite(C).all():
        raise ValueError("C contains NaN or inf")
    return C
