"""The on-device scoring module, its serving form, and export/verification in the real runtimes.

A trained recommender is served in one of two forms (:class:`ServingForm`):

- ``table``: the final propagated embeddings of every user and item (the "serving shortcut":
  exact, but the artifact holds the full (n_users + n_items) x d table);
- ``composed``: a codebook B (c x d, fp32) plus, per entity, t codebook indices (int8 holding
  index - 128 up to 256 rows, else int16/int32) and weights (fp16): ``e = sum_j w_j B[idx_j]``.
  This is what the meta-embedding methods save, and the artifact computes every embedding from it. LightGCN's propagated embeddings are not
  exactly compositional, so :func:`fit_composed` fits the form to them (alternating least
  squares on ``||H - S B||``, supports picked by the method's own rule top-t of ``H pinv(B)``).

The scoring module takes a user id (int64, shape [1]) and returns the top-K item ids (int64,
[1, K]) and scores (fp32, [1, K]). The composed scorer never materialises the item table:
``z = B u`` (c scores against the codebook), then ``score_i = sum_j w_ij z[idx_ij]``.

>>> import torch
>>> form = ServingForm.full_table(torch.eye(3), torch.eye(3))
>>> ids, scores = form.scorer(k=2)(torch.tensor([1]))
>>> int(ids[0, 0]), float(scores[0, 0])
(1, 1.0)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import ExportError, MobilecError

TARGET_SUFFIX = {"executorch": ".pte", "tflite": ".tflite"}
INT8_OFFSET = 128  # int8 container for up to 256 codebook rows: stored = index - 128


@dataclass
class ServingForm:
    """What the device stores: a full table, or a codebook plus per-entity (index, weight)."""

    kind: str  # table | composed
    n_users: int
    n_items: int
    table: torch.Tensor | None = None  # (N, d) fp32
    codebook: torch.Tensor | None = None  # (c, d) fp32
    index: torch.Tensor | None = None  # (N, t) stored indices: int8 (minus INT8_OFFSET) / int16 / int32
    weight: torch.Tensor | None = None  # (N, t) fp16
    fit: dict[str, Any] | None = None

    @classmethod
    def full_table(cls, users: torch.Tensor, items: torch.Tensor) -> ServingForm:
        table = torch.cat([users, items]).detach().to(torch.float32).contiguous()
        return cls(kind="table", n_users=len(users), n_items=len(items), table=table)

    @classmethod
    def composed(cls, codebook: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, n_users: int, **kw: Any) -> ServingForm:
        c = codebook.shape[0]
        if index.min() < 0 or index.max() >= c:
            raise MobilecError(f"assignment indices must lie in 0..{c - 1}")
        index = index.long()
        # the smallest signed container (LiteRT has no unsigned constants): up to 256 rows in int8, offset by 128
        stored = (index - INT8_OFFSET).to(torch.int8) if c <= 256 else index.to(torch.int16 if c <= 32767 else torch.int32)
        return cls(kind="composed", n_users=n_users, n_items=index.shape[0] - n_users,
                   codebook=codebook.detach().to(torch.float32).contiguous(),
                   index=stored.contiguous(), weight=weight.detach().to(torch.float16).contiguous(), **kw)

    @property
    def index_offset(self) -> int:
        return INT8_OFFSET if self.index is not None and self.index.dtype == torch.int8 else 0

    def indices(self) -> torch.Tensor:
        """The (N, t) codebook row indices as int64."""
        assert self.index is not None
        return self.index.long() + self.index_offset

    @property
    def dim(self) -> int:
        src = self.table if self.kind == "table" else self.codebook
        assert src is not None
        return src.shape[1]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense (users, items) embeddings the artifact computes (fp16 weights widened to fp32)."""
        full = self.table if self.kind == "table" else (self.codebook[self.indices()] * self.weight.float().unsqueeze(-1)).sum(1)
        assert full is not None
        return full[: self.n_users], full[self.n_users :]

    def memory(self) -> dict[str, int]:
        """Bytes of every tensor the device must hold for the embeddings."""
        if self.kind == "table":
            return {"table": _nbytes(self.table), "total": _nbytes(self.table)}
        out = {"codebook": _nbytes(self.codebook), "index": _nbytes(self.index), "weight": _nbytes(self.weight)}
        out["total"] = sum(out.values())
        return out

    def embedding_bytes(self) -> int:
        return self.memory()["total"]

    def scorer(self, k: int = 20) -> nn.Module:
        if not 1 <= k <= self.n_items:
            raise MobilecError(f"top-K with K={k} over {self.n_items} items", hint=f"choose 1 <= K <= {self.n_items}")
        if self.kind == "table":
            users, items = self.embeddings()
            return TableScorer(users, items, k).eval()
        return ComposedScorer(self, k).eval()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (save with ``torch.save``; load with ``weights_only=True`` and :meth:`from_state_dict`)."""
        sizes = torch.tensor([self.n_users, self.n_items])
        if self.kind == "table":
            return {"table": self.table, "sizes": sizes}
        return {"codebook": self.codebook, "index": self.index, "weight": self.weight, "sizes": sizes}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ServingForm:
        n_users, n_items = (int(v) for v in state["sizes"])
        if "table" in state:
            return cls(kind="table", n_users=n_users, n_items=n_items, table=state["table"])
        if not {"codebook", "index", "weight"} <= set(state):
            raise MobilecError("serving state needs codebook, index and weight tensors", hint="save it with ServingForm.state_dict()")
        return cls(kind="composed", n_users=n_users, n_items=n_items, codebook=state["codebook"], index=state["index"],
                   weight=state["weight"])

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "dim": self.dim, "memory": self.memory()}
        if self.kind == "composed":
            out.update(codebook_rows=self.codebook.shape[0], nonzeros_per_entity=self.index.shape[1],
                       index_dtype=str(self.index.dtype).replace("torch.", ""), index_offset=self.index_offset,
                       weight_dtype="float16")
        if self.fit:
            out["fit"] = self.fit
        return out


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class TableScorer(nn.Module):
    """Top-K items for one user from stored final embeddings (serving shortcut)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, k: int) -> None:
        super().__init__()
        # clone: views sharing one storage are serialised wrongly by torch.export -> ExecuTorch
        self.register_buffer("user_table", users.detach().float().clone())
        self.register_buffer("item_table", items.detach().float().clone())
        self.k = k

    def forward(self, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.user_table.index_select(0, user)  # (1, d)
        scores = F.linear(u, self.item_table)  # (1, n_items): a fully-connected layer XNNPACK takes
        vals, ids = torch.topk(scores, self.k, dim=1)
        return ids, vals


class ComposedScorer(nn.Module):
    """Top-K items for one user, every embedding computed from the codebook and (index, weight)."""

    def __init__(self, form: ServingForm, k: int) -> None:
        super().__init__()
        assert form.kind == "composed"
        nu = form.n_users
        self.register_buffer("codebook", form.codebook.clone())
        self.register_buffer("user_index", form.index[:nu].clone())
        self.register_buffer("user_weight", form.weight[:nu].clone())
        self.register_buffer("item_index", form.index[nu:].clone())
        self.register_buffer("item_weight", form.weight[nu:].clone())
        self.k = k
        self.offset = form.index_offset

    def forward(self, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.user_index.index_select(0, user).reshape(-1).to(torch.int64) + self.offset  # (t,)
        # fp16 -> fp32 before the gather: LiteRT has no fp16 gather kernel
        w = self.user_weight.to(torch.float32).index_select(0, user).reshape(-1, 1)  # (t, 1)
        u = (self.codebook.index_select(0, idx) * w).sum(0, keepdim=True)  # (1, d)
        z = F.linear(u, self.codebook).reshape(-1)  # (c,): the user against every meta-embedding
        item_idx = self.item_index.to(torch.int64) + self.offset
        scores = (z[item_idx] * self.item_weight.to(torch.float32)).sum(1)  # (n_items,)
        vals, ids = torch.topk(scores.reshape(1, -1), self.k, dim=1)
        return ids, vals


# -- fitting the composed form to propagated embeddings -------------------------------------------
def fit_composed(
    h: torch.Tensor,
    codebook: torch.Tensor,
    t: int,
    n_users: int,
    *,
    support: torch.Tensor | None = None,
    reselect: bool = True,
    select: str = "pinv",
    iters: int = 10,
    ridge: float = 1e-4,
) -> ServingForm:
    """Fit ``h ≈ S B`` with t non-zeros per row of S, starting from codebook ``B``.

    Alternates (a) supports (only when ``reselect``; otherwise ``support`` stays), chosen by
    ``select``: ``"pinv"``, the method's rule, per-row top-t of ``h pinv(B)``, or ``"omp"``,
    orthogonal matching pursuit (greedy, picks each next row against the residual; a much
    closer fit at the same t), (b) per-row least-squares weights on the support, (c) the
    least-squares codebook ``B = (S^T S + ridge I)^-1 S^T h``. The iterate with the lowest
    relative error ``||h - S B|| / ||h||`` is kept.
    """
    if select not in ("pinv", "omp"):
        raise MobilecError(f"unknown support rule select = {select!r}", hint="use \"pinv\" or \"omp\"")
    h = h.detach().to(torch.float64)
    b = codebook.detach().to(torch.float64).clone()
    c = b.shape[0]
    if support is None and not reselect:
        raise MobilecError("fit_composed: give a support or let it reselect")
    norm = float(h.norm())
    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    history = []
    for _ in range(max(iters, 1)):
        if reselect:
            support = omp_support(h, b, t) if select == "omp" else torch.topk(h @ torch.linalg.pinv(b), t, dim=1).indices
        assert support is not None
        w = _row_weights(h, b, support, ridge)
        s = torch.zeros(h.shape[0], c, dtype=h.dtype).scatter_add_(1, support, w)
        err = float((h - s @ b).norm()) / max(norm, 1e-12)
        history.append(err)
        if best is None or err < best[0]:
            best = (err, b.clone(), support.clone(), w.clone())
        b = torch.linalg.solve(s.T @ s + ridge * torch.eye(c, dtype=h.dtype), s.T @ h)
    assert best is not None
    # the final codebook with its own refit weights, if better
    w = _row_weights(h, b, support, ridge)
    s = torch.zeros(h.shape[0], c, dtype=h.dtype).scatter_add_(1, support, w)
    err = float((h - s @ b).norm()) / max(norm, 1e-12)
    history.append(err)
    if err < best[0]:
        best = (err, b, support, w)
    err, b, support, w = best
    return ServingForm.composed(b.float(), support, w.float(), n_users,
                                fit={"relative_error": err, "iterations": len(history), "reselect": reselect,
                                     "select": select if reselect else "fixed", "history": [round(e, 5) for e in history]})


def omp_support(h: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
    """Per row of ``h``, the t codebook rows orthogonal matching pursuit picks (weights are refit by the caller)."""
    from sklearn.decomposition import sparse_encode

    bn = b.detach().double().numpy()
    bn = bn / np.maximum(np.linalg.norm(bn, axis=1, keepdims=True), 1e-12)
    codes = sparse_encode(h.detach().double().numpy(), bn, algorithm="omp", n_nonzero_coefs=t)
    order = np.argsort(-np.abs(codes), axis=1, kind="stable")  # OMP may stop early (exact fit): pad with other rows
    return torch.as_tensor(order[:, :t].copy())


def _row_weights(h: torch.Tensor, b: torch.Tensor, support: torch.Tensor, ridge: float) -> torch.Tensor:
    g = b[support]  # (N, t, d)
    gram = g @ g.transpose(1, 2) + ridge * torch.eye(g.shape[1], dtype=h.dtype)
    rhs = (g @ h.unsqueeze(-1))
    return torch.linalg.solve(gram, rhs).squeeze(-1)


class ComposedModel(nn.Module):
    """A graph-free model over a composed form (trainable codebook and weights, fixed indices), for BPR tuning."""

    def __init__(self, form: ServingForm) -> None:
        super().__init__()
        assert form.kind == "composed"
        self.n_users, self.n_items = form.n_users, form.n_items
        self.codebook = nn.Parameter(form.codebook.clone())
        self.weight = nn.Parameter(form.weight.float().clone())
        self.register_buffer("index", form.indices().clone())

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        e = (self.codebook[self.index] * self.weight.unsqueeze(-1)).sum(1)
        return e, e

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            e = self.forward_all()[0]
        return e[: self.n_users], e[self.n_users :]

    def to_form(self, fit: dict[str, Any] | None = None) -> ServingForm:
        return ServingForm.composed(self.codebook.detach(), self.index, self.weight.detach(), self.n_users, fit=fit)


def tune_composed(form: ServingForm, data: Any, cfg: Any, *, progress: bool = False) -> tuple[ServingForm, dict[str, Any]]:
    """BPR-tune the composed form's codebook and weights directly (what the device computes); indices stay."""
    from mobilec.recsys.lightgcn import train_bpr

    model = ComposedModel(form)
    result = train_bpr(model, data, cfg, progress=progress, label="serve-tune")
    fit = dict(form.fit or {})
    fit["bpr_tune"] = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "valid_recall@20": result.best_valid,
                       "seconds": result.seconds}
    return model.to_form(fit=fit), fit["bpr_tune"]


# -- export --------------------------------------------------------------------------------------
def example_user() -> tuple[torch.Tensor]:
    return (torch.tensor([0], dtype=torch.int64),)


def export_executorch(module: nn.Module, out_path: Path) -> Any:
    """Lower to ExecuTorch with the XNNPACK partitioner; gather/topk/cast stay on portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge, to_edge_transform_and_lower

    from mobilec.export.base import Artifact
    from mobilec.io import write_bytes_atomic

    try:
        ep = torch.export.export(module, example_user())
        before = _op_counts(to_edge(torch.export.export(module, example_user())).exported_program().graph)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        after = _op_counts(edge.exported_program().graph)
        buffer = edge.to_executorch().buffer
    except Exception as exc:  # exporter internals raise many types; the user needs one line
        raise ExportError(f"ExecuTorch export of the scoring module failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    write_bytes_atomic(out_path, buffer)
    not_delegated = {k: v for k, v in after.items() if k != "executorch_call_delegate"}
    n_before = sum(before.values())
    delegation = {"backend": "XNNPACK", "total": n_before, "delegated": n_before - sum(not_delegated.values()),
                  "not_delegated": not_delegated}
    return Artifact(target="executorch", path=out_path, size_bytes=len(buffer), delegation=delegation,
                    layers=_layer_bits(module),
                    notes=["gather (index/index_select), dtype casts and topk run on ExecuTorch portable kernels"])


def export_tflite(module: nn.Module, out_path: Path) -> Any:
    """Convert with litert-torch (int64 I/O kept: ``enable_x64=True``)."""
    import contextlib
    import io
    import os

    import litert_torch

    from mobilec.export.base import Artifact
    from mobilec.export.tflite_names import names_note, strip_tensor_names
    from mobilec.io import atomic_path

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            edge_model = litert_torch.convert(module, example_user(), enable_x64=True)
            with atomic_path(out_path) as tmp:
                edge_model.export(str(tmp))
    except Exception as exc:
        raise ExportError(f"LiteRT export of the scoring module failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    layers = _tflite_layer_bits(module, out_path)  # reads the file before its tensor names go
    saved = strip_tensor_names(out_path)
    art = Artifact(target="tflite", path=out_path, size_bytes=os.path.getsize(out_path), layers=layers)
    art.notes.append("the LiteRT converter folds constant casts: int16 indices / fp16 weights are stored widened (see layers)")
    if saved:
        art.notes.append(names_note(saved))
    return art


def _op_counts(graph: Any) -> Counter:
    """Operator name -> count of the call_function nodes of an (edge) graph; delegates counted as one name."""
    counts: Counter = Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if "executorch_call_delegate" in str(node.target):
            counts["executorch_call_delegate"] += 1
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "getitem":
            continue
        parts = name.split(".")
        counts[parts[1] if len(parts) > 1 and parts[0] in ("aten", "dim_order_ops") else parts[0]] += 1
    return counts


_BUFFER_KIND = {"codebook": "codebook", "user_index": "assignment_index", "item_index": "assignment_index",
                "user_weight": "assignment_weight", "item_weight": "assignment_weight", "user_table": "embedding_table",
                "item_table": "embedding_table"}


def _layer_bits(module: nn.Module, *, stored: dict[str, torch.dtype | None] | None = None) -> list[Any]:
    """One LayerBits per stored tensor; ``stored`` overrides the container dtype (None: not found in the file)."""
    from mobilec.export.base import LayerBits

    rows = []
    for name, buf in module.named_buffers():
        dtype = buf.dtype if stored is None else stored.get(name)
        info = _bits(buf.dtype)
        executed = "fp32" if buf.dtype.is_floating_point else "int64"
        container = _short(dtype) if dtype is not None else "not found (merged into another constant)"
        stored_bytes = buf.numel() * _bits(dtype) // 8 if dtype is not None else 0
        rows.append(LayerBits(name=name, kind=_BUFFER_KIND.get(name, "buffer"), params=buf.numel(), info_bits=info,
                              stored=container, executed=executed, stored_bytes=stored_bytes, packed_bytes=buf.numel() * info // 8))
    return rows


def _bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32",
            torch.int64: "int64"}.get(
        dtype, str(dtype).replace("torch.", ""))


def _tflite_layer_bits(module: nn.Module, path: Path) -> list[Any]:
    """Stored dtypes read back from the .tflite file: the constant tensor holding each buffer's values."""
    from ai_edge_litert.interpreter import Interpreter

    np_to_torch = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16, np.dtype(np.int16): torch.int16,
                   np.dtype(np.int8): torch.int8,
                   np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    details = interp.get_tensor_details()
    stored: dict[str, torch.dtype | None] = {}
    for name, buf in module.named_buffers():
        stored[name] = None
        want = buf.detach().to(torch.float64).reshape(-1).numpy()
        wants = [want, want + INT8_OFFSET] if buf.dtype == torch.int8 else [want]  # the converter may fold the offset in
        for d in details:
            if int(np.prod(d["shape"])) != buf.numel() or d["name"].startswith("serving_default"):
                continue
            try:
                got = interp.get_tensor(d["index"])
            except ValueError:  # tensors without data (intermediates before invoke)
                continue
            if any(np.array_equal(got.astype(np.float64).reshape(-1), w) for w in wants):
                stored[name] = np_to_torch.get(np.dtype(got.dtype), buf.dtype)
                break
    return _layer_bits(module, stored=stored)


def export_scoring(
    form: ServingForm, out_dir: Path, *, k: int = 20, targets: Sequence[str] = ("executorch", "tflite"), stem: str = "scoring"
) -> tuple[nn.Module, list[Any], list[dict[str, str]]]:
    """Build the scorer and export it to each target; returns (module, artifacts, failures)."""
    module = form.scorer(k)
    artifacts, failures = [], []
    for target in targets:
        if target not in TARGET_SUFFIX:
            raise MobilecError(f"unknown scoring export target {target!r}", hint=f"use {', '.join(TARGET_SUFFIX)}")
        path = Path(out_dir) / f"{stem}{TARGET_SUFFIX[target]}"
        try:
            art = export_executorch(module, path) if target == "executorch" else export_tflite(module, path)
        except ExportError as exc:
            failures.append({"target": target, "error": str(exc)})
            continue
        artifacts.append(art)
    return module, artifacts, failures


# -- verification in the real runtimes ---------------------------------------------------------------
class _Runner:
    def __init__(self, path: Path, target: str) -> None:
        self.target = target
        if target == "executorch":
            from executorch.runtime import Runtime

            self.method = Runtime.get().load_program(str(path)).load_method("forward")
        else:
            from ai_edge_litert.interpreter import Interpreter

            self.interp = Interpreter(model_path=str(path))
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            outs = self.interp.get_output_details()
            # outputs: the int tensor is the ids, the float tensor the scores
            self.ids_out = next(o for o in outs if np.issubdtype(o["dtype"], np.integer))
            self.val_out = next(o for o in outs if np.issubdtype(o["dtype"], np.floating))

    def __call__(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        if self.target == "executorch":
            ids, vals = self.method.execute([torch.tensor([user], dtype=torch.int64)])
            return ids.numpy().reshape(-1), vals.numpy().reshape(-1)
        self.interp.set_tensor(self.inp["index"], np.array([user], dtype=self.inp["dtype"]))
        self.interp.invoke()
        return (self.interp.get_tensor(self.ids_out["index"]).reshape(-1),
                self.interp.get_tensor(self.val_out["index"]).reshape(-1))


def verify_scoring(artifact: Any, module: nn.Module, users: Sequence[int]) -> dict[str, Any]:
    """Run the artifact in its runtime for every user; compare top-K ids and scores with the eager module."""
    runner = _Runner(Path(artifact.path), artifact.target)
    mismatched: list[int] = []
    max_err = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        for user in users:
            ref_ids, ref_vals = module(torch.tensor([int(user)], dtype=torch.int64))
            ids, vals = runner(int(user))
            if not np.array_equal(ids.astype(np.int64), ref_ids.numpy().reshape(-1)):
                mismatched.append(int(user))
            max_err = max(max_err, float(np.abs(vals - ref_vals.numpy().reshape(-1)).max()))
    seconds = time.perf_counter() - t0
    return {
        "users": len(users),
        "identical_topk": len(users) - len(mismatched),
        "mismatched_users": mismatched[:20],
        "max_abs_score_error": max_err,
        "passed": not mismatched,
        "seconds": seconds,
    }
