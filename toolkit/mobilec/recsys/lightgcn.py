"""LightGCN (He et al., SIGIR 2020) with a full embedding table, and the BPR training loop.

Every recommender here is a graph model over N = n_users + n_items entity nodes (users
first, then items) that implements ``forward_all() -> (final, ego)``: the layer-averaged
propagated embeddings used for scoring and the layer-0 ("ego") embeddings the L2 penalty
acts on. :func:`train_bpr` trains any such model with BPR on one uniformly sampled negative
per training positive, Adam, and early stopping on validation Recall@20.

>>> from mobilec.recsys.data import synthetic_interactions
>>> data = synthetic_interactions()
>>> model = build_lightgcn(data, dim=16, layers=2)
>>> model.forward_all()[0].shape
torch.Size([140, 16])
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import MobilecError
from mobilec.recsys.metrics import evaluate_embeddings

EARLY_STOP_METRIC = "recall@20"


# -- graph ------------------------------------------------------------------------------------
def sym_norm_adj(n_nodes: int, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the symmetric matrix with entries (rows, cols, vals) and their mirror.

    Pass each undirected edge once; nodes of degree 0 keep zero rows. Returns a sparse CSR
    tensor (duplicate entries summed).
    """
    r = torch.cat([rows, cols]).long()
    c = torch.cat([cols, rows]).long()
    v = torch.cat([vals, vals]).to(torch.float32)
    deg = torch.zeros(n_nodes).index_add_(0, r, v)
    dinv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    v = dinv[r] * v * dinv[c]
    coo = torch.sparse_coo_tensor(torch.stack([r, c]), v, (n_nodes, n_nodes), check_invariants=False).coalesce()
    return coo.to_sparse_csr()


class _SymSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; the backward reuses A (A^T = A), so no transpose is built per step."""

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


def spmm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sparse (symmetric) adjacency times dense features, differentiable in ``x``."""
    return _SymSpMM.apply(adj, x) if x.requires_grad else adj @ x


def interaction_graph(data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user-item edges of the training split as (rows, cols, weights) over entity nodes."""
    pairs = torch.as_tensor(data.train, dtype=torch.long)
    return pairs[:, 0], pairs[:, 1] + data.n_users, torch.ones(len(pairs))


def propagate(adj: torch.Tensor, x0: torch.Tensor, layers: int, hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """LightGCN propagation: mean of x0, A x0, A^2 x0, ... (``hook`` rewrites each layer's output)."""
    out = x0
    acc = x0
    for _ in range(layers):
        out = spmm(adj, out)
        if hook is not None:
            out = hook(out)
        acc = acc + out
    return acc / (layers + 1)


class GraphHolder:
    """Mixin: ``self.adj`` is a CSR adjacency stored as its three dense parts, so models deep-copy and pickle."""

    @property
    def adj(self) -> torch.Tensor:
        crow, col, val, size = self._adj_parts
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)

    @adj.setter
    def adj(self, value: torch.Tensor) -> None:
        csr = value if value.layout == torch.sparse_csr else value.to_sparse_csr()
        self._adj_parts = (csr.crow_indices(), csr.col_indices(), csr.values(), tuple(csr.shape))


# -- the full-table model ---------------------------------------------------------------------
class LightGCN(GraphHolder, nn.Module):
    """LightGCN with one ``dim``-wide embedding row per user and per item.

    ``forward(user_ids)`` returns the scores of every item for those users.

    >>> from mobilec.recsys.data import synthetic_interactions
    >>> m = LightGCN(synthetic_interactions(), dim=8, layers=2)
    >>> m(torch.tensor([0, 1])).shape
    torch.Size([2, 80])
    """

    kind = "lightgcn"

    def __init__(self, data: Any, dim: int = 64, layers: int = 3, *, seed: int = 0) -> None:
        super().__init__()
        _check_dims(dim, layers)
        self.n_users, self.n_items, self.dim, self.layers = data.n_users, data.n_items, dim, layers
        gen = torch.Generator().manual_seed(seed)
        self.embedding = nn.Parameter(torch.randn(self.n_users + self.n_items, dim, generator=gen) * 0.1)
        self.adj = sym_norm_adj(self.n_users + self.n_items, *interaction_graph(data))

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        return propagate(self.adj, self.embedding, self.layers), self.embedding

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            final = self.forward_all()[0]
        return final[: self.n_users], final[self.n_users :]

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        users, items = self.final_embeddings()
        return users[user_ids] @ items.T

    def embedding_bytes(self) -> int:
        return self.embedding.numel() * self.embedding.element_size()

    def config(self) -> dict[str, Any]:
        return {"model": self.kind, "dim": self.dim, "layers": self.layers, "n_users": self.n_users, "n_items": self.n_items}

    def serving_form(self, data: Any | None = None) -> Any:
        """The final propagated table (the only exact serving form of a full-table LightGCN)."""
        from mobilec.recsys.scoring import ServingForm

        users, items = self.final_embeddings()
        return ServingForm.full_table(users, items)


def build_lightgcn(data: Any, dim: int = 64, layers: int = 3, *, seed: int = 0) -> LightGCN:
    """Zoo entry: an untrained full-table LightGCN sized for ``data``."""
    return LightGCN(data, dim=dim, layers=layers, seed=seed)


def _check_dims(dim: int, layers: int) -> None:
    if dim < 1:
        raise MobilecError(f"embedding dim {dim} must be at least 1", hint="e.g. dim = 64")
    if layers < 0:
        raise MobilecError(f"layers {layers} must be at least 0", hint="e.g. layers = 3")


# -- BPR training -----------------------------------------------------------------------------
@dataclass
class BPRConfig:
    """Training settings. ``patience`` counts evaluations (every ``eval_every`` epochs) without a new best."""

    epochs: int = 400
    lr: float = 1e-3
    batch_size: int = 2048
    reg: float = 1e-4
    eval_every: int = 5
    patience: int = 6
    max_seconds: float | None = None
    seed: int = 0
    threads: int | None = 1  # torch intra-op threads while training (None: leave as is); on small graphs 1 is fastest
    min_epochs: int = 0  # no validation (hence no early stop) before this epoch
    eval_initial: bool = False  # the untrained/warm-started state competes for "best" too

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1 or self.min_epochs < 0:
            raise MobilecError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, eval_every={self.eval_every}, patience={self.patience} "
                "must all be at least 1"
            )
        if not self.lr > 0 or self.reg < 0:
            raise MobilecError(f"lr={self.lr} must be > 0 and reg={self.reg} >= 0")


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: float
    epochs_run: int
    seconds: float
    stopped: str  # early-stop | epochs | time
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NegativeSampler:
    """Uniform negatives that are not training positives of the user (rejection sampling)."""

    def __init__(self, data: Any, seed: int) -> None:
        self.n_items = data.n_items
        self.pairs = np.asarray(data.train, dtype=np.int64)
        self.keys = np.sort(self.pairs[:, 0] * self.n_items + self.pairs[:, 1])
        self.rng = np.random.default_rng(seed)

    def _is_pos(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users * self.n_items + items
        pos = np.searchsorted(self.keys, k)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == k

    def epoch(self) -> np.ndarray:
        """A shuffled (n_train, 3) array of (user, positive, negative)."""
        pairs = self.pairs[self.rng.permutation(len(self.pairs))]
        neg = self.rng.integers(0, self.n_items, len(pairs))
        for _ in range(20):
            bad = self._is_pos(pairs[:, 0], neg)
            if not bad.any():
                break
            neg[bad] = self.rng.integers(0, self.n_items, int(bad.sum()))
        return np.concatenate([pairs, neg[:, None]], axis=1)


def bpr_loss(model: nn.Module, batch: torch.Tensor, n_users: int, reg: float) -> torch.Tensor:
    final, ego = model.forward_all()
    idx = torch.cat([batch[:, 0], batch[:, 1] + n_users, batch[:, 2] + n_users])
    u, i, j = final[idx].chunk(3)
    loss = F.softplus(((j - i) * u).sum(1)).mean()
    if reg:
        loss = loss + reg * 0.5 * ego[idx].pow(2).sum() / len(batch)
    return loss


def validation_score(model: nn.Module, data: Any) -> dict[str, float]:
    model.eval()
    users, items = model.final_embeddings()
    model.train()
    return evaluate_embeddings(users, items, data, "valid", ks=(20,))


def train_bpr(
    model: nn.Module,
    data: Any,
    cfg: BPRConfig,
    *,
    params: list[nn.Parameter] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    progress: bool = False,
    label: str = "",
) -> TrainResult:
    """Train ``model`` with BPR; keep (and restore at the end) the state with the best validation Recall@20.

    ``on_epoch_start(epoch)`` runs before each epoch (the C2F assignment refresh).
    ``model.restore_state(state)`` is used when present so derived structures (graphs) follow.
    """
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_bpr(model, data, cfg, params, on_epoch_start, progress, label)
    finally:
        torch.set_num_threads(old_threads)


def _train_bpr(
    model: nn.Module,
    data: Any,
    cfg: BPRConfig,
    params: list[nn.Parameter] | None,
    on_epoch_start: Callable[[int], None] | None,
    progress: bool,
    label: str,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    sampler = NegativeSampler(data, cfg.seed)
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise MobilecError(f"{label or 'training'}: the model has no trainable parameters")
    opt = torch.optim.Adam(trainable, lr=cfg.lr)
    t0 = time.perf_counter()
    best_state = _snapshot(model)
    best = validation_score(model, data)[EARLY_STOP_METRIC] if cfg.eval_initial else -1.0
    best_epoch, bad, stopped = 0, 0, "epochs"
    history: list[dict[str, float]] = [{"epoch": 0, "valid_recall@20": best, "seconds": 0.0}] if cfg.eval_initial else []
    model.train()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        triples = torch.as_tensor(sampler.epoch(), dtype=torch.long)
        total, steps = 0.0, 0
        for start in range(0, len(triples), cfg.batch_size):
            loss = bpr_loss(model, triples[start : start + cfg.batch_size], data.n_users, cfg.reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        if (epoch % cfg.eval_every == 0 or epoch == cfg.epochs) and (epoch >= cfg.min_epochs or epoch == cfg.epochs):
            score = validation_score(model, data)[EARLY_STOP_METRIC]
            history.append({"epoch": epoch, "loss": total / max(steps, 1), "valid_recall@20": score,
                            "seconds": time.perf_counter() - t0})
            if progress:
                print(f"  {label} epoch {epoch:4d} loss {total / max(steps, 1):.4f} valid recall@20 {score:.4f}"
                      f"{' *' if score > best else ''}", file=sys.stderr, flush=True)
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = _snapshot(model)
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = "early-stop"
                    break
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            stopped = "time"
            break
    _restore(model, best_state)
    model.eval()
    return TrainResult(best_epoch=best_epoch, best_valid=max(best, 0.0), epochs_run=epoch,
                       seconds=time.perf_counter() - t0, stopped=stopped, history=history)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if hasattr(model, "restore_state"):
        model.restore_state(state)
    else:
        model.load_state_dict(state)


# -- entry points -----------------------------------------------------------------------------
def train_lightgcn(
    data: Any,
    *,
    dim: int = 64,
    layers: int = 3,
    cfg: BPRConfig | None = None,
    progress: bool = False,
) -> tuple[LightGCN, TrainResult]:
    """Train a full-table LightGCN on ``data`` (Adam 1e-3, early stop on validation Recall@20)."""
    cfg = cfg or BPRConfig()
    model = build_lightgcn(data, dim=dim, layers=layers, seed=cfg.seed)
    result = train_bpr(model, data, cfg, progress=progress, label="lightgcn")
    return model, result


def train_or_load_lightgcn(
    data: Any,
    workdir: Path | str,
    *,
    dim: int = 64,
    layers: int = 3,
    cfg: BPRConfig | None = None,
    progress: bool = False,
) -> tuple[LightGCN, dict[str, Any]]:
    """Load the full-table model cached in ``workdir`` for this data split and settings, or train and cache it.

    Returns ``(model, info)``; ``info`` holds the training record (``train_seconds`` etc.) and
    ``cached`` (True when loaded). The cache key covers the split fingerprint, dim, layers and
    every training setting.
    """
    from mobilec.io import load_state_dict, save_state_dict_atomic, write_json_atomic

    cfg = cfg or BPRConfig()
    key = f"lightgcn-{data.fingerprint()}-d{dim}-l{layers}-" + _cfg_key(cfg)
    workdir = Path(workdir)
    ckpt, meta_path = workdir / f"{key}.pt", workdir / f"{key}.json"
    if ckpt.is_file() and meta_path.is_file():
        model = build_lightgcn(data, dim=dim, layers=layers, seed=cfg.seed)
        state = load_state_dict(ckpt)
        if set(state) != {"embedding"} or tuple(state["embedding"].shape) != tuple(model.embedding.shape):
            raise MobilecError(f"cached model {ckpt} does not match the data", hint=f"delete {ckpt} to retrain")
        model.load_state_dict(state)
        model.eval()
        info = json.loads(meta_path.read_text())
        info["cached"] = True
        return model, info
    model, result = train_lightgcn(data, dim=dim, layers=layers, cfg=cfg, progress=progress)
    info = {"config": model.config(), "train": result.to_dict(), "train_seconds": result.seconds, "bpr": asdict(cfg)}
    save_state_dict_atomic(model.state_dict(), ckpt)
    write_json_atomic(meta_path, info)
    info["cached"] = False
    return model, info


def _cfg_key(cfg: BPRConfig) -> str:
    """Hash of the settings that change the trained model (threads do not)."""
    import hashlib

    settings = {k: v for k, v in asdict(cfg).items() if k != "threads"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
