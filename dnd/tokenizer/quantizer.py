"""Residual quantization (RQ-VAE) with one codebook shared by every depth, learned by EMA only.

Every latent vector `z` becomes D codes: `r0 = z`; `k_d = argmin_k ||r_{d-1} - e(k)||`;
`r_d = r_{d-1} - e(k_d)`. The decoder sees the full sum `e(k_1) + ... + e(k_D)`; the first d terms
(a partial sum) give a coarser reconstruction. Gradients pass to the encoder by the straight-through
estimator; the codebook gets none: it follows an exponential moving average of the vectors assigned to
each code, and codes whose average count drops below a threshold restart from random residuals of the
current batch.

In training the shared codebook is updated as the authors' RQ-VAE updates it: once per depth, in order.
Depth d searches the codebook as updated by depth d-1, subtracts the embeddings of that same codebook,
then takes one EMA step from its own residuals and codes and restarts dead codes from its own residuals.
A batch therefore makes D updates of decay `ema_decay`. (One update per batch pooled over all depths was
measured against this rule on the demo and was better only in depth 1's code usage; see the README.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

CODEBOOK_INITS = ("restart", "depth_by_depth")
# Rows of a (rows × codebook_size) distance matrix computed at once: bounds the memory of a search.
DISTANCE_CHUNK_ELEMENTS = 1 << 26


@torch.no_grad()
def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row for each vector: (N, C), (K, C) -> (N,) long.

    ||x - e||² = ||x||² - 2 x·e + ||e||²; the ||x||² term does not change the argmin, so it is dropped.
    """
    codebook_sq = codebook.pow(2).sum(dim=1)  # (K,)
    rows = max(1, DISTANCE_CHUNK_ELEMENTS // codebook.shape[0])
    return torch.cat(
        [torch.addmm(codebook_sq, chunk, codebook.T, alpha=-2.0).argmin(dim=1) for chunk in vectors.split(rows)]
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _draw_indices(total: int, n: int, device: torch.device) -> Tensor:
    """n row indices out of `total`, at random (without replacement when there are enough)."""
    if total >= n:
        return torch.randperm(total, device=device)[:n]
    return torch.randint(total, (n,), device=device)


@torch.no_grad()
def _sample_rows(vectors: Tensor, n: int) -> Tensor:
    """n rows drawn at random from vectors (without replacement when there are enough)."""
    return vectors[_draw_indices(vectors.shape[0], n, vectors.device)]


def _rank_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's `size`, in rank order."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([size], device=device))
    return [int(s) for s in sizes]


@torch.no_grad()
def _gather_rows(rows: Tensor) -> Tensor:
    """(n_r, C) on each rank -> every rank's rows in rank order: the ranks' shares back into the batch."""
    if not _distributed():
        return rows
    sizes = _rank_sizes(rows.shape[0], rows.device)
    padded = rows.new_zeros(max(sizes), *rows.shape[1:])  # all_gather needs one shape on every rank
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([chunk[:size] for chunk, size in zip(gathered, sizes)])


@torch.no_grad()
def _sample_batch_rows(residual_inputs: Tensor, n: int) -> Tensor:
    """n rows drawn at random from the (D, N, C) residuals of the whole batch, all ranks' shares included.

    Under torch.distributed the batch is the ranks' shares in rank order, and the draw is the one a
    single process holding the whole batch would make: rank 0 draws row indices of the whole batch,
    each rank fills in the rows it holds and a sum assembles them, so no rank sends its residuals.
    """
    depth, count, channels = residual_inputs.shape
    if not _distributed():
        return _sample_rows(rearrange(residual_inputs, "d n c -> (d n) c"), n)
    sizes = _rank_sizes(count, residual_inputs.device)
    total, offset = sum(sizes), sum(sizes[: dist.get_rank()])
    index = _draw_indices(depth * total, n, residual_inputs.device)
    dist.broadcast(index, src=0)
    d, position = index.div(total, rounding_mode="floor"), index % total
    local = position - offset
    mine = (local >= 0) & (local < count)
    rows = residual_inputs[d, local.clamp(0, count - 1)]
    rows = torch.where(mine.unsqueeze(1), rows, torch.zeros_like(rows))  # exactly one rank adds each row
    dist.all_reduce(rows)
    return rows


@torch.no_grad()
def kmeans(vectors: Tensor, n_centers: int, iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from a random sample of the vectors: -> centers (n_centers, C), counts (n_centers,).

    A center that loses all its vectors keeps its position.
    """
    centers = _sample_rows(vectors, n_centers).clone()
    for _ in range(iters):
        assigned = nearest_codes(vectors, centers)
        counts = torch.bincount(assigned, minlength=n_centers).to(vectors.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assigned, vectors)
        used = counts > 0
        centers[used] = sums[used] / counts[used, None]
    counts = torch.bincount(nearest_codes(vectors, centers), minlength=n_centers).to(vectors.dtype)
    return centers, counts


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (B, h, w, C) full sum of the D code embeddings, straight-through to the input
    codes: Tensor  # (B, h, w, D) long
    commitment_loss: Tensor  # () mean over depths of mse(z, partial_sum_d.detach())
    code_usage: Tensor  # (D, K) how often each code was chosen at each depth in this batch
    partial_sums: Tensor | None  # (D, B, h, w, C) e(k_1) + ... + e(k_d), when asked for


class ResidualQuantizer(nn.Module):
    """Depth-D residual quantizer over one shared codebook of `codebook_size × embed_dim`.

    Inputs are channel-last latents `(B, h, w, C)`; the search runs in float32 whatever the autocast.
    In training mode every forward updates the codebook by EMA. Under `torch.distributed` (data
    parallel: each rank holds a share of the batch, the shares in rank order make the batch), each rank
    must run the same training forwards, and the codebook follows the whole batch exactly as in one
    process: the EMA statistics are summed over ranks, restart vectors are drawn from every rank's
    residuals, and a depth-by-depth initialisation fits the gathered latents; rank 0's draws and
    results are broadcast, so every rank keeps the same codebook. Anything run on one rank alone
    (logging reconstructions, validation) must use eval mode.
    """

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        depth: int,
        ema_decay: float = 0.99,
        laplace_eps: float = 1e-5,
        restart_threshold: float = 1.0,
        dead_code_restart: bool = True,
        codebook_init: str = "restart",
    ):
        super().__init__()
        if codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {codebook_init!r}")
        if depth < 1 or codebook_size < depth:
            raise ValueError(f"need 1 <= depth <= codebook_size, got depth {depth}, codebook_size {codebook_size}")
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.ema_decay = ema_decay
        self.laplace_eps = laplace_eps
        self.restart_threshold = restart_threshold
        self.dead_code_restart = dead_code_restart
        self.codebook_init = codebook_init
        # Buffers, not parameters: no optimizer ever touches the codebook. With "restart" the first
        # training batch replaces these random rows (every EMA count starts below the threshold).
        codebook = torch.randn(codebook_size, embed_dim)
        self.register_buffer("codebook", codebook)  # (K, C)
        self.register_buffer("ema_cluster_size", torch.zeros(codebook_size))  # (K,)
        self.register_buffer("ema_embed_sum", codebook.clone())  # (K, C)
        # Set once a depth-by-depth initialisation has run, so a resumed run does not redo it.
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, embed_dim={self.embed_dim}, depth={self.depth}"

    @torch.no_grad()
    def assign(self, latents: Tensor) -> Tensor:
        """Codes of latents without touching the codebook: (B, h, w, C) -> (B, h, w, D) long."""
        codes, _ = self._residual_search(rearrange(latents.float(), "b h w c -> (b h w) c"))
        return rearrange(codes, "d (b h w) -> b h w d", b=latents.shape[0], h=latents.shape[1])

    def embed(self, codes: Tensor) -> Tensor:
        """Sum of the code embeddings over the last axis: (..., d) long -> (..., C)."""
        return F.embedding(codes, self.codebook).sum(dim=-2)

    def forward(self, latents: Tensor, return_partial_sums: bool = False) -> QuantizerOutput:
        batch, height = latents.shape[:2]
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = rearrange(latents.float(), "b h w c -> (b h w) c")  # (N, C)
            if self.training and self.codebook_init == "depth_by_depth" and not self.initialized:
                self.init_codebook_depth_by_depth(z)
            if self.training:
                codes, embeddings = self._search_and_update_per_depth(z.detach())  # (D, N), (D, N, C)
            else:
                codes, _ = self._residual_search(z.detach())  # (D, N)
                embeddings = self.codebook[codes]  # (D, N, C)
            partial_sums = embeddings.cumsum(dim=0)  # (D, N, C)
            commitment_loss = (z.unsqueeze(0) - partial_sums).pow(2).mean()  # = mean_d mse(z, partial_d)
            quantized = z + (partial_sums[-1] - z).detach()  # straight-through estimator
            usage = self._code_usage(codes)
        unflatten = dict(b=batch, h=height)
        return QuantizerOutput(
            quantized=rearrange(quantized, "(b h w) c -> b h w c", **unflatten),
            codes=rearrange(codes, "d (b h w) -> b h w d", **unflatten),
            commitment_loss=commitment_loss,
            code_usage=usage,
            partial_sums=rearrange(partial_sums, "d (b h w) c -> d b h w c", **unflatten)
            if return_partial_sums
            else None,
        )

    @torch.no_grad()
    def _residual_search(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C) float32 -> codes (D, N) and the residual each depth quantized (D, N, C)."""
        residual = z
        codes, residual_inputs = [], []
        with torch.autocast(device_type=z.device.type, enabled=False):  # argmin over bf16 distances is unreliable
            for _ in range(self.depth):
                code = nearest_codes(residual, self.codebook)
                codes.append(code)
                residual_inputs.append(residual)
                residual = residual - self.codebook[code]
        return torch.stack(codes), torch.stack(residual_inputs)

    @torch.no_grad()
    def _search_and_update_per_depth(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Training search and update, depth by depth: (N, C) float32 -> codes (D, N) and embeddings (D, N, C).

        Each depth's embeddings come from the codebook it searched, taken before its own update (a copy:
        the update rewrites the codebook in place).
        """
        residual = z
        codes, embeddings = [], []
        for _ in range(self.depth):
            code = nearest_codes(residual, self.codebook)
            embedding = self.codebook[code]  # (N, C), a copy
            self._ema_update(residual.unsqueeze(0), code.unsqueeze(0))
            codes.append(code)
            embeddings.append(embedding)
            residual = residual - embedding
        return torch.stack(codes), torch.stack(embeddings)

    def _code_usage(self, codes: Tensor) -> Tensor:
        """(D, N) -> (D, K) counts of each code at each depth."""
        offsets = torch.arange(self.depth, device=codes.device).unsqueeze(1) * self.codebook_size
        counts = torch.bincount((codes + offsets).flatten(), minlength=self.depth * self.codebook_size)
        return counts.view(self.depth, self.codebook_size)

    @torch.no_grad()
    def _ema_update(self, residual_inputs: Tensor, codes: Tensor) -> None:
        """One EMA step and restart from one depth's residuals (1, N, C) and their codes (1, N)."""
        vectors = rearrange(residual_inputs, "d n c -> (d n) c")
        index = codes.flatten()
        cluster_size = torch.bincount(index, minlength=self.codebook_size).float()  # (K,)
        embed_sum = torch.zeros_like(self.codebook).index_add_(0, index, vectors)  # (K, C)
        if _distributed():
            dist.all_reduce(cluster_size)
            dist.all_reduce(embed_sum)
        self.ema_cluster_size.mul_(self.ema_decay).add_(cluster_size, alpha=1 - self.ema_decay)
        self.ema_embed_sum.mul_(self.ema_decay).add_(embed_sum, alpha=1 - self.ema_decay)
        if self.dead_code_restart:
            # A fixed-size draw for every code (not just the dead ones) avoids a device sync on their count.
            replacement = _sample_batch_rows(residual_inputs, self.codebook_size)
            dead = self.ema_cluster_size < self.restart_threshold  # (K,)
            self.ema_embed_sum[dead] = replacement[dead] * self.restart_threshold
            self.ema_cluster_size[dead] = self.restart_threshold
        self._refresh_codebook()

    @torch.no_grad()
    def _refresh_codebook(self) -> None:
        """codebook = EMA sum / EMA count, counts Laplace-smoothed so an empty code never divides by 0."""
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.laplace_eps) / (total + self.codebook_size * self.laplace_eps) * total
        self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def init_codebook_depth_by_depth(self, latents: Tensor, kmeans_iters: int = 10) -> None:
        """Fill the codebook from each depth's residuals, one even slice of codes per depth.

        Slice 1 is fitted (k-means) to the latents themselves, slice 2 to the residuals left after
        quantizing with slice 1, slice d to the residuals left by the codes initialised so far. A codebook
        drawn only from latents has nothing small enough for the deep residuals, which can make deep
        RQ training diverge. `latents` (..., C) should be about one training batch: the assignment
        counts become the EMA counts, which are per batch. Under torch.distributed `latents` is this
        rank's share: the fit runs on every rank's latents gathered (the whole batch, as the EMA counts).
        """
        vectors = _gather_rows(latents.detach().float().reshape(-1, self.embed_dim))
        codebook = torch.empty_like(self.codebook)
        counts = torch.empty_like(self.ema_cluster_size)
        residual, start = vectors, 0
        for depth in range(self.depth):
            size = self.codebook_size // self.depth + (depth < self.codebook_size % self.depth)
            codebook[start : start + size], counts[start : start + size] = kmeans(residual, size, kmeans_iters)
            start += size
            residual = residual - codebook[nearest_codes(residual, codebook[:start])]
        if _distributed():
            dist.broadcast(codebook, src=0)
            dist.broadcast(counts, src=0)
        self.codebook.copy_(codebook)
        self.ema_cluster_size.copy_(counts)
        self.ema_embed_sum.copy_(codebook * counts.unsqueeze(1))
        self.initialized.fill_(True)
