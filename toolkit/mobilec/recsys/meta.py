"""Compositional embedding models: C2F meta-embeddings (coarse + fine stages) and a hashing baseline.

C2F-MetaEmbed (arXiv 2501.11870), built on LightGCN and LEGCF:

- coarse stage: codebook ``E_c`` (c1 x d); sparse assignment ``S1`` (N x c1, t non-zeros per
  entity) initialised from a graph partition (own cluster weight w*, the rest spread over
  random other centroids); entity embedding ``tanh(S1 E_c)``; the meta-embeddings are extra
  nodes of the propagation graph ``[[A, S1], [S1^T, 0]]``; LightGCN layer averaging; BPR.
  After training with S1 fixed, S1 is refreshed every epoch as the per-row top-t of
  ``H_full pinv(H_c)`` (propagated entity / meta-embedding states).
- fine stage: E_c frozen; a fine codebook ``E_r`` (c2 x d) initialised by SparsePCA on rows of
  E_c (codes placed into random dimensions), used through soft thresholding
  ``sign(E_r) relu(|E_r| - tau)``; coarse-to-fine links ``S2`` (top-k2 per coarse row, init from
  a fine graph partition, refreshed every epoch from ``softmax(P1^T P2)`` with
  ``P1 = H_full pinv(H_c)``, ``P2 = H_full pinv(H_r)``); weight bridging
  ``Ê_c = g S2 Ê_r + (1 - g) E_c``; graph ``[[A, S1, 0], [S1^T, 0, S2], [0, S2^T, 0]]`` (fine
  nodes link only to coarse nodes); after each propagation layer the coarse states are
  re-bridged, ``Ĥ_c = g S2 H_r + (1 - g) H_c``, and each entity state moves by ``Â_S1 (Ĥ_c - H_c)``
  (Â_S1: the graph's normalized entity-to-coarse links; the authors' code uses the raw S1, which
  with learned S1 weights moved the entities far enough to lose most of the coarse accuracy).

Sparse matrices are held as ``(index, weight)`` tensors with a fixed number of non-zeros per row.

>>> from mobilec.recsys.data import synthetic_interactions
>>> data = synthetic_interactions()
>>> m = MetaEmbedLightGCN(data, dim=8, layers=2, c1=6, partition="spectral")
>>> m.forward_all()[0].shape
torch.Size([140, 8])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.recsys.lightgcn import GraphHolder, interaction_graph, propagate, sym_norm_adj


def sparse_rows_matmul(index: torch.Tensor, weight: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """(S @ dense) for S given per row by ``index`` (R, t) and ``weight`` (R, t)."""
    return (dense[index] * weight.unsqueeze(-1)).sum(1)


def sparse_rows_t_matmul(index: torch.Tensor, weight: torch.Tensor, dense: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(S^T @ dense) for the same row-sparse S of shape (R, n_cols)."""
    out = torch.zeros(n_cols, dense.shape[1], dtype=dense.dtype)
    contrib = dense.unsqueeze(1) * weight.unsqueeze(-1)  # (R, t, d)
    return out.index_add_(0, index.reshape(-1), contrib.reshape(-1, dense.shape[1]))


def topk_rows(mat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals, idx = torch.topk(mat, k, dim=1)
    return idx, vals


def partition_assignment(parts: np.ndarray, n_cols: int, t: int, own_weight: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S1 init: weight ``own_weight`` on the node's own cluster, the rest spread over t-1 random other clusters."""
    n = len(parts)
    if t == 1:
        return torch.as_tensor(parts, dtype=torch.long)[:, None], torch.ones(n, 1)
    rng = np.random.default_rng(seed)
    idx = np.empty((n, t), dtype=np.int64)
    idx[:, 0] = parts
    for row in range(n):  # t-1 distinct random clusters other than the own one
        others = rng.choice(n_cols - 1, t - 1, replace=False)
        others = others + (others >= parts[row])
        idx[row, 1:] = others
    w = np.full((n, t), (1.0 - own_weight) / (t - 1), dtype=np.float32)
    w[:, 0] = own_weight
    return torch.as_tensor(idx), torch.as_tensor(w)


class MetaEmbedLightGCN(GraphHolder, nn.Module):
    """LightGCN whose entity embeddings are composed from meta-embedding codebooks (C2F).

    Built in the coarse stage; :meth:`start_fine` adds the fine stage. ``forward_all()``
    returns ``(final, ego)`` for the N = n_users + n_items entities, like :class:`LightGCN`.
    """

    kind = "c2f"

    def __init__(
        self,
        data: Any,
        *,
        dim: int = 64,
        layers: int = 3,
        c1: int = 200,
        t: int = 2,
        own_weight: float = 0.55,
        partition: str = "metis",
        init_std: float = 0.1,
        learn_weights: bool = True,
        select: str = "pinv",
        seed: int = 0,
    ) -> None:
        super().__init__()
        n = data.n_users + data.n_items
        check_codebook(c1, t, n, "c1")
        if select not in ("pinv", "omp"):
            raise MobilecError(f"unknown support rule select = {select!r}", hint="use \"pinv\" (the paper's) or \"omp\"")
        if t > 1 and not 0.0 < own_weight < 1.0:
            raise MobilecError(f"own_weight {own_weight} must lie in (0, 1)", hint="the method uses 0.5-0.6")
        from mobilec.recsys.partition import partition_graph

        self.n_users, self.n_items, self.dim, self.layers = data.n_users, data.n_items, dim, layers
        self.c1, self.t, self.seed, self.select = c1, t, seed, select
        self._parts = None
        gen = torch.Generator().manual_seed(seed)
        self.coarse = nn.Parameter(torch.randn(c1, dim, generator=gen) * init_std)
        parts = partition_graph(data, c1, method=partition, seed=seed)
        self._parts = torch.as_tensor(parts, dtype=torch.long)
        idx, w = partition_assignment(parts, c1, t, own_weight, seed)
        self.register_buffer("s1_index", idx)
        if learn_weights:  # the t values of each row train with BPR; the support changes only on refresh
            self.s1_weight = nn.Parameter(w)
        else:
            self.register_buffer("s1_weight", w)
        self.learn_weights = learn_weights
        self._edges = interaction_graph(data)
        # a fixed factor on the propagated states (1 unless warm-started): tanh bounds the entity
        # embeddings, so a warm start shrinks the reference table into tanh's range and this factor
        # restores its score range (rankings never depend on it)
        self.register_buffer("output_scale", torch.tensor(1.0))
        self.stage = "coarse"
        self.fine: nn.Parameter | None = None
        self.tau = 0.0
        self.gate = 0.0
        self.c2 = 0
        self.k2 = 0
        self.rebuild_graph()

    # -- graph ---------------------------------------------------------------------------
    @property
    def n_entities(self) -> int:
        return self.n_users + self.n_items

    def rebuild_graph(self) -> None:
        """The normalized expanded adjacency over entities, coarse nodes (and fine nodes)."""
        n = self.n_entities
        rows, cols, vals = self._edges
        e_rows = torch.arange(n).repeat_interleave(self.t)
        s1 = self.s1_weight.detach().reshape(-1).clamp_min(0)
        parts = [(rows, cols, vals), (e_rows, self.s1_index.reshape(-1) + n, s1)]
        total = n + self.c1
        if self.stage == "fine":
            c_rows = torch.arange(self.c1).repeat_interleave(self.k2) + n
            parts.append((c_rows, self.s2_index.reshape(-1) + n + self.c1, self.s2_weight.reshape(-1).clamp_min(0)))
            total += self.c2
        r = torch.cat([p[0] for p in parts])
        c = torch.cat([p[1] for p in parts])
        v = torch.cat([p[2] for p in parts])
        keep = v > 0
        self.adj = sym_norm_adj(total, r[keep], c[keep], v[keep])
        # the normalized entity -> coarse link weights of that graph, for the per-layer re-bridging
        deg = torch.zeros(total).index_add_(0, r[keep], v[keep]).index_add_(0, c[keep], v[keep])
        dinv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
        self._s1_norm = dinv[:n, None] * s1.reshape(n, self.t) * dinv[self.s1_index + n]

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)
        self.rebuild_graph()

    # -- embeddings ----------------------------------------------------------------------
    def sparse_fine(self) -> torch.Tensor:
        """Ê_r = sign(E_r) relu(|E_r| - tau)."""
        assert self.fine is not None
        return torch.sign(self.fine) * torch.relu(self.fine.abs() - self.tau)

    def bridged_coarse(self) -> torch.Tensor:
        """Ê_c = g S2 Ê_r + (1 - g) E_c in the fine stage; E_c in the coarse stage."""
        if self.stage != "fine":
            return self.coarse
        return self.gate * sparse_rows_matmul(self.s2_index, self.s2_weight, self.sparse_fine()) + (1 - self.gate) * self.coarse

    def _propagate_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, c1 = self.n_entities, self.c1
        ec = self.bridged_coarse()
        ego = torch.tanh(sparse_rows_matmul(self.s1_index, self.s1_weight, ec))
        blocks = [ego, ec]
        hook = None
        if self.stage == "fine":
            blocks.append(torch.tanh(self.sparse_fine()))

            def hook(h: torch.Tensor) -> torch.Tensor:  # re-bridging after every layer
                he, hc, hr = h[:n], h[n : n + c1], h[n + c1 :]
                hc_new = self.gate * sparse_rows_matmul(self.s2_index, self.s2_weight, hr) + (1 - self.gate) * hc
                # entities see the bridged coarse states through the graph's own (normalized) S1 links
                he = he + sparse_rows_matmul(self.s1_index, self._s1_norm, hc_new - hc)
                return torch.cat([he, hc_new, hr])

        x0 = torch.cat(blocks)
        return propagate(self.adj, x0, self.layers, hook), ego

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        h, ego = self._propagate_all()
        return h[: self.n_entities] * self.output_scale, ego

    def propagated_states(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Layer-averaged (H_full, H_c, H_r) without gradients."""
        with torch.no_grad():
            h, _ = self._propagate_all()
        n, c1 = self.n_entities, self.c1
        h = h * self.output_scale
        return h[:n], h[n : n + c1], (h[n + c1 :] if self.stage == "fine" else None)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.propagated_states()[0]
        return h[: self.n_users], h[self.n_users :]

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        users, items = self.final_embeddings()
        return users[user_ids] @ items.T

    # -- assignment refresh ----------------------------------------------------------------
    def refresh_coarse_assignment(self) -> dict[str, float]:
        """S1 <- per-row top-t of H_full pinv(H_c), rescaled to the row's previous L1 norm; rebuild the graph.

        With ``select = "omp"`` the support is the one orthogonal matching pursuit picks for H_full
        on H_c, and the values are the least-squares weights on it (rescaled the same way).

        The rescaling keeps every row on its current scale (rows sum to 1 at init; with learnable
        weights the scale is learned): the raw pinv coefficients are small (the minimum-norm
        solution spreads over all c1 centroids), and refreshing every epoch with them shrinks
        S1, hence tanh(S1 E_c) and H_full, geometrically until the embeddings collapse
        (observed on ML-100k).
        """
        h_full, h_c, _ = self.propagated_states()
        if self.select == "omp":
            from mobilec.recsys.scoring import _row_weights, omp_support

            idx = omp_support(h_full, h_c, self.t)
            vals = _row_weights(h_full.double(), h_c.double(), idx, 1e-4).float()
        else:
            idx, vals = topk_rows(h_full @ torch.linalg.pinv(h_c), self.t)
        with torch.no_grad():
            old_l1 = self.s1_weight.abs().sum(1, keepdim=True)
            vals = vals * old_l1 / vals.abs().sum(1, keepdim=True).clamp_min(1e-12)
            changed = float((idx.sort(1).values != self.s1_index.sort(1).values).any(1).float().mean())
            self.s1_index.copy_(idx)
            self.s1_weight.copy_(vals)
        self.rebuild_graph()
        return {"rows_changed": changed, "centroids_used": int(idx.unique().numel())}

    def warm_start(self, reference_ego: torch.Tensor, *, iters: int = 10) -> dict[str, float]:
        """Initialise E_c and the S1 weights so that tanh(S1 E_c) reproduces a trained table's ranking.

        Dot-product rankings do not change when every embedding is scaled by the same factor, so
        the reference ego table is scaled into tanh's near-linear range, mapped through atanh,
        and fitted by least squares on the partition support of S1 (which stays as initialised).
        With ``select = "omp"`` the graph partition gives the starting codebook instead (the mean
        target row of each cluster) and S1's support is refitted by orthogonal matching pursuit
        (alternating with least-squares codebooks): a much closer start at the same t.
        """
        from mobilec.recsys.scoring import fit_composed

        ref = reference_ego.detach().to(torch.float32)
        if ref.shape != (self.n_entities, self.dim):
            raise MobilecError(f"warm start needs a ({self.n_entities}, {self.dim}) reference table, got {tuple(ref.shape)}",
                               hint="warm-start from the LightGCN trained on the same data and width")
        scale = float(torch.quantile(ref.abs().reshape(-1)[:1_000_000], 0.999)) / 0.9 or 1.0
        target = torch.atanh((ref / scale).clamp(-0.95, 0.95))
        if self.select == "omp":
            assert self._parts is not None
            sums = torch.zeros(self.c1, self.dim).index_add_(0, self._parts, target)
            counts = torch.bincount(self._parts, minlength=self.c1).clamp_min(1)
            form = fit_composed(target, sums / counts[:, None], self.t, self.n_users, reselect=True, select="omp", iters=iters)
        else:
            form = fit_composed(target, self.coarse.detach(), self.t, self.n_users, support=self.s1_index.clone(),
                                reselect=False, iters=iters)
        with torch.no_grad():
            self.coarse.copy_(form.codebook)
            self.s1_index.copy_(form.indices())
            self.s1_weight.copy_(form.weight.float())
            self.output_scale.fill_(scale)
        self.rebuild_graph()
        return {"scale": scale, "relative_error": form.fit["relative_error"], "select": self.select}

    def epoch_start(self, epoch: int) -> None:
        """Before a fixed-assignment epoch: re-derive the graph's entity-meta links from the learned weights."""
        if self.learn_weights:
            self.rebuild_graph()

    def start_fine(
        self, data: Any, *, c2: int, k2: int = 4, tau: float = 0.01, gate: float = 0.2, n_components: int = 16,
        sparse_alpha: float = 1.0, partition: str = "metis", compensate: bool = True, tau_relative: bool = False,
    ) -> dict[str, float]:
        """Freeze E_c and add the fine codebook E_r (SparsePCA init) and the coarse-to-fine links S2.

        SparsePCA runs on the sampled E_c rows divided by their RMS, so ``sparse_alpha`` does not
        depend on the codebook's scale (its L1 term scales linearly, the fit term quadratically:
        on the raw rows of a warm-started ML-100k codebook, RMS 0.15, alpha = 1 zeroed every
        component); the codes are scaled back. ``tau_relative``: ``tau`` is a fraction of the
        median |value| of the initial non-zeros (else an absolute threshold).

        The soft threshold has zero gradient wherever ``|E_r| <= tau`` (and at exactly 0), so an
        entry below the threshold never comes back: a threshold above every initial value would
        leave the fine stage a no-op, which is an error here.

        ``compensate`` divides the frozen E_c by (1 - gate) once, so that bridging does not
        shrink the trained coarse codebook (without it the bridged start loses most of the
        coarse stage's accuracy; observed on ML-100k).

        Returns the init statistics: ``tau`` (absolute), ``init_scale`` (median |non-zero|),
        ``init_nonzeros`` (before the threshold) and ``nonzeros`` (after it).
        """
        check_codebook(c2, k2, self.c1, "c2", links_name="k2", links_limit_name="c1")
        if not 0.0 <= gate <= 1.0 or tau < 0:
            raise MobilecError(f"gate {gate} must lie in [0, 1] and tau {tau} must be >= 0", hint="the method uses gate 0.2")
        if not 1 <= n_components <= self.dim:
            raise MobilecError(f"n_components {n_components} must lie in 1..{self.dim}", hint="e.g. n_components = 16")
        if not sparse_alpha > 0:
            raise MobilecError(f"sparse_alpha {sparse_alpha} must be > 0", hint="e.g. sparse_alpha = 1.0")
        from sklearn.decomposition import SparsePCA

        from mobilec.recsys.partition import partition_graph

        rng = np.random.default_rng(self.seed + 1)
        rows = self.coarse.detach().numpy()[rng.choice(self.c1, c2, replace=True)].astype(np.float64)
        rms = float(np.sqrt(np.mean(rows**2))) or 1.0
        codes = SparsePCA(n_components=n_components, alpha=sparse_alpha, random_state=self.seed,
                          max_iter=200).fit_transform(rows / rms) * rms
        if not np.any(codes != 0):
            raise MobilecError(
                f"SparsePCA with sparse_alpha = {sparse_alpha} zeroed every fine code (c2 = {c2}, n_components = {n_components}):"
                " the fine codebook would start at 0, where the soft threshold has no gradient",
                hint="lower sparse_alpha (the rows are RMS-normalised; 1.0 or less)",
            )
        fine = np.zeros((c2, self.dim), dtype=np.float32)
        for r in range(c2):  # the codes go into random dimensions, the rest stays zero
            fine[r, np.sort(rng.choice(self.dim, n_components, replace=False))] = codes[r]
        init_scale = float(np.median(np.abs(fine[fine != 0])))
        tau_abs = tau * init_scale if tau_relative else float(tau)
        init_nnz = int((fine != 0).sum())
        kept = int((np.abs(fine) > tau_abs).sum())
        if kept == 0:
            raise MobilecError(
                f"tau = {tau_abs:.4g} zeroes the whole fine codebook at init (its {init_nnz} non-zeros have median |value|"
                f" {init_scale:.4g}, max {float(np.abs(fine).max()):.4g}): the fine stage would be a no-op",
                hint="lower tau, or give it relative to the init scale with tau_relative = true (e.g. tau = 0.25)",
            )
        self.coarse.requires_grad_(False)
        self.s1_weight.requires_grad_(False)
        if compensate and gate < 1.0:  # Ê_c = g S2 Ê_r + (1 - g) E_c starts at E_c + g S2 Ê_r, not at (1 - g) E_c
            with torch.no_grad():
                self.coarse.div_(1.0 - gate)
        self.fine = nn.Parameter(torch.as_tensor(fine))
        self.c2, self.k2, self.tau, self.gate = c2, k2, tau_abs, float(gate)
        # S2 init: coarse row j links to the fine clusters its members fall into (softmax over co-membership)
        fine_parts = torch.as_tensor(partition_graph(data, c2, method=partition, seed=self.seed + 1))
        co = torch.zeros(self.c1, c2)
        co.index_put_((self.s1_index.reshape(-1), fine_parts.repeat_interleave(self.t)), self.s1_weight.detach().reshape(-1),
                      accumulate=True)
        idx, vals = topk_rows(torch.softmax(co, dim=1), k2)
        self.register_buffer("s2_index", idx)
        self.register_buffer("s2_weight", vals)
        self.stage = "fine"
        self.rebuild_graph()
        return {"tau": tau_abs, "init_scale": init_scale, "init_nonzeros": init_nnz, "nonzeros": kept}

    def to_coarse(self, state: dict[str, torch.Tensor]) -> None:
        """Undo :meth:`start_fine`: drop E_r and S2 and load a coarse-stage ``state`` (to try another fine setting)."""
        for name in ("fine", "s2_index", "s2_weight"):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
        self.fine = None
        self.stage, self.tau, self.gate, self.c2, self.k2 = "coarse", 0.0, 0.0, 0, 0
        self.coarse.requires_grad_(True)
        self.s1_weight.requires_grad_(self.learn_weights)
        self.restore_state(state)

    def fine_nonzeros(self) -> int:
        """Non-zeros of the thresholded fine codebook Ê_r (0 before the fine stage)."""
        return 0 if self.fine is None else int((self.sparse_fine() != 0).sum())

    def refresh_fine_assignment(self) -> dict[str, float]:
        """S2 <- per-row top-k2 of softmax(P1^T P2), P1 = H_full pinv(H_c), P2 = H_full pinv(H_r)."""
        h_full, h_c, h_r = self.propagated_states()
        assert h_r is not None
        p1 = h_full @ torch.linalg.pinv(h_c)
        p2 = h_full @ torch.linalg.pinv(h_r)
        idx, vals = topk_rows(torch.softmax(p1.T @ p2, dim=1), self.k2)
        self.s2_index.copy_(idx)
        self.s2_weight.copy_(vals)
        self.rebuild_graph()
        return {"fine_used": int(idx.unique().numel())}

    # -- memory ----------------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """Bytes of the trained parametrisation: fp32 codebooks, sparse matrices as int8/int16/int32 index + fp16 weight."""
        out = {
            "coarse_codebook": self.c1 * self.dim * 4,
            "s1": assignment_bytes(self.n_entities, self.t, self.c1),
        }
        if self.stage == "fine":
            out["fine_codebook_sparse"] = fine_codebook_bytes(self.fine_nonzeros(), self.c2, self.dim)
            out["s2"] = assignment_bytes(self.c1, self.k2, self.c2)
        out["total"] = sum(out.values())
        return out

    def embedding_bytes(self) -> int:
        return self.memory()["total"]

    def config(self) -> dict[str, Any]:
        cfg = {"model": "c2f-" + self.stage, "dim": self.dim, "layers": self.layers, "c1": self.c1, "t": self.t,
               "n_users": self.n_users, "n_items": self.n_items}
        if self.stage == "fine":
            cfg.update(c2=self.c2, k2=self.k2, tau=self.tau, gate=self.gate)
        return cfg

    def serving_form(self, data: Any | None = None, **kwargs: Any) -> Any:
        """Codebook + (index, weight) form of the final embeddings (see :func:`mobilec.recsys.scoring.fit_composed`)."""
        from mobilec.recsys.scoring import fit_composed

        h_full, h_c, _ = self.propagated_states()
        return fit_composed(h_full, h_c, self.t, self.n_users, reselect=True, select=self.select, **kwargs)


class HashLightGCN(GraphHolder, nn.Module):
    """Hashing-trick baseline: each entity sums ``t`` rows of a shared ``c``-row table picked by seeded hashes.

    Embedding ``e = (1/t) sum_j E[h_j(e)]`` with t distinct buckets per entity, propagated by
    plain LightGCN over the user-item graph.
    """

    kind = "hash"

    def __init__(self, data: Any, *, dim: int = 64, layers: int = 3, c: int = 200, t: int = 2, seed: int = 0) -> None:
        super().__init__()
        n = data.n_users + data.n_items
        check_codebook(c, t, n, "c")
        self.n_users, self.n_items, self.dim, self.layers, self.c, self.t = data.n_users, data.n_items, dim, layers, c, t
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(c, dim, generator=gen) * 0.1)
        idx = torch.stack([torch.randperm(c, generator=gen)[:t] for _ in range(n)]) if t > 1 else torch.randint(0, c, (n, 1), generator=gen)
        self.register_buffer("index", idx)
        self.register_buffer("weight", torch.full((n, t), 1.0 / t))
        self.adj = sym_norm_adj(n, *interaction_graph(data))

    def warm_start(self, reference_ego: torch.Tensor, *, ridge: float = 1e-4) -> dict[str, float]:
        """Least-squares table for the fixed hashed assignment: S E ≈ the reference's embedding table."""
        ref = reference_ego.detach().to(torch.float64)
        s = torch.zeros(ref.shape[0], self.c, dtype=torch.float64).scatter_add_(1, self.index, self.weight.double())
        table = torch.linalg.solve(s.T @ s + ridge * torch.eye(self.c, dtype=torch.float64), s.T @ ref)
        with torch.no_grad():
            self.table.copy_(table.float())
        err = float((ref - s @ table).norm() / ref.norm().clamp_min(1e-12))
        return {"relative_error": err}

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = sparse_rows_matmul(self.index, self.weight, self.table)
        return propagate(self.adj, ego, self.layers), ego

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = self.forward_all()[0]
        return h[: self.n_users], h[self.n_users :]

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        users, items = self.final_embeddings()
        return users[user_ids] @ items.T

    def memory(self) -> dict[str, int]:
        out = {"table": self.c * self.dim * 4, "index": self.index.numel() * index_bytes(self.c)}
        out["total"] = sum(out.values())  # fixed weights 1/t: nothing to store
        return out

    def embedding_bytes(self) -> int:
        return self.memory()["total"]

    def config(self) -> dict[str, Any]:
        return {"model": self.kind, "dim": self.dim, "layers": self.layers, "c": self.c, "t": self.t,
                "n_users": self.n_users, "n_items": self.n_items}

    def serving_form(self, data: Any | None = None, **kwargs: Any) -> Any:
        from mobilec.recsys.scoring import fit_composed

        h = self.final_embeddings()
        return fit_composed(torch.cat(h), self.table.detach(), self.t, self.n_users, support=self.index.clone(),
                            reselect=False, **kwargs)


# -- sizes and checks -------------------------------------------------------------------------
def index_bytes(n_cols: int) -> int:
    """Bytes of one column index: int8 (index - 128) up to 256 columns, int16 up to 32767, else int32."""
    return 1 if n_cols <= 256 else 2 if n_cols <= 32767 else 4


def fine_codebook_bytes(nonzeros: int, rows: int, dim: int) -> int:
    """The sparse fine codebook in CSR: fp32 value + column index per non-zero, int32 row pointers."""
    return nonzeros * (4 + index_bytes(dim)) + (rows + 1) * 4


def assignment_bytes(n_rows: int, t: int, n_cols: int) -> int:
    """A row-sparse matrix with t non-zeros per row: int8/int16/int32 index (see index_bytes) + fp16 weight."""
    return n_rows * t * (index_bytes(n_cols) + 2)


def check_codebook(size: int, t: int, limit: int, name: str, *, links_name: str = "t", links_limit_name: str = "users+items") -> None:
    if size < 1:
        raise MobilecError(f"codebook size {name} = {size} must be at least 1", hint=f"set {name} to a positive number of rows")
    if size > limit:
        raise MobilecError(
            f"codebook size {name} = {size} exceeds the {limit} {links_limit_name} it compresses",
            hint=f"choose {name} < {limit}",
        )
    if not 1 <= t <= size:
        raise MobilecError(f"{links_name} = {t} non-zeros per row must lie in 1..{size}", hint=f"e.g. {links_name} = 2")
