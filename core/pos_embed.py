"""Position embeddings: MAE's fixed 2-D sin-cos table and timm-compatible resampling to another grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_2d(embed_dim: int, grid_size: int, cls_token: bool = True, dtype=torch.float32) -> torch.Tensor:
    """The 2-D sin-cos table MAE uses: ``[1, (1 if cls_token) + grid_size**2, embed_dim]``.

    The first half of the channels encodes the column, the second half the row (MAE's ``meshgrid(w, h)``
    ordering), each half as ``[sin(pos * omega), cos(pos * omega)]`` with ``omega = 10000 ** -(i / (dim / 4))``.
    The class token's row is zero.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # token t = row * grid + col

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.unsqueeze(0).to(dtype)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize a learned ``[1, prefix + h*w, dim]`` position embedding to ``new_grid``.

    Bicubic with anti-aliasing in float32, prefix (class) tokens untouched: the same numbers timm produces when
    it loads a checkpoint at another image size (fine-tuning at 518 px from 224 px pretraining).
    """
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n_grid**0.5))
        if side * side != n_grid:
            raise ValueError(f"position embedding has {n_grid} grid tokens, not a square; pass old_grid=(h, w)")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
