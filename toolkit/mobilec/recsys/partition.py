"""Partition the user-item training graph into ``n_parts`` clusters (initial meta-embedding assignment).

``method="metis"`` uses METIS through the ``pymetis`` package (balanced min-cut, as the
C2F/LEGCF authors do); ``method="spectral"`` is the documented alternative without METIS:
k-means on the leading eigenvectors of the normalized adjacency (scipy only).

>>> from mobilec.recsys.data import synthetic_interactions
>>> parts = partition_graph(synthetic_interactions(), 4, method="spectral")
>>> parts.shape, int(parts.max()) < 4
((140,), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import MobilecError

METHODS = ("metis", "spectral")


def partition_graph(data: Any, n_parts: int, *, method: str = "metis", seed: int = 0) -> np.ndarray:
    """Cluster id (0..n_parts-1) of each entity node (users first, then items) of the training graph."""
    n = data.n_users + data.n_items
    if method not in METHODS:
        raise MobilecError(f"unknown partition method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    if not 1 <= n_parts <= n:
        raise MobilecError(
            f"cannot partition {n} users+items into {n_parts} clusters",
            hint=f"choose a codebook size between 1 and {n}",
        )
    if n_parts == 1:
        return np.zeros(n, dtype=np.int64)
    rows, cols = _edges(data)
    parts = _metis(n, rows, cols, n_parts, seed) if method == "metis" else _spectral(n, rows, cols, n_parts, seed)
    return _fill_empty(parts.astype(np.int64), n_parts, seed)


def _edges(data: Any) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.asarray(data.train, dtype=np.int64)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1] + data.n_users])
    cols = np.concatenate([pairs[:, 1] + data.n_users, pairs[:, 0]])
    return rows, cols


def _metis(n: int, rows: np.ndarray, cols: np.ndarray, n_parts: int, seed: int) -> np.ndarray:
    try:
        import pymetis
    except ImportError:
        raise MobilecError(
            "graph partitioning with METIS needs the pymetis package",
            hint="pip install pymetis, or set partition = \"spectral\" in the recipe",
        ) from None
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    xadj = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    try:
        options = pymetis.Options(seed=seed)
    except (TypeError, AttributeError):  # older pymetis without seeded options
        options = None
    _, membership = pymetis.part_graph(n_parts, xadj=xadj, adjncy=cols.astype(np.int64), options=options)
    return np.asarray(membership)


def _spectral(n: int, rows: np.ndarray, cols: np.ndarray, n_parts: int, seed: int) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.cluster.vq import kmeans2
    from scipy.sparse.linalg import eigsh

    adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    deg = np.asarray(adj.sum(1)).ravel()
    dinv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    norm = sp.diags(dinv) @ adj @ sp.diags(dinv)
    k = min(max(2, min(n_parts, 64)), n - 2)
    rng = np.random.default_rng(seed)
    _, vecs = eigsh(norm, k=k, which="LA", v0=rng.standard_normal(n))
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    _, labels = kmeans2(vecs, n_parts, minit="++", seed=seed)
    return labels


def _fill_empty(parts: np.ndarray, n_parts: int, seed: int) -> np.ndarray:
    """Give every empty cluster one node taken from the largest cluster (each meta-embedding gets a member)."""
    counts = np.bincount(parts, minlength=n_parts)
    rng = np.random.default_rng(seed)
    for empty in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        node = rng.choice(np.flatnonzero(parts == donor))
        parts[node] = empty
        counts[donor] -= 1
        counts[empty] += 1
    return parts
