"""bench/metaembed.py: each c2f row is paired with its own coarse stage, per start (warm / random)."""

from __future__ import annotations

from typing import Any

from bench_support import load_bench


def _bench() -> Any:
    return load_bench("metaembed")


def _row(name: str, recipe: str, recall: float, seed: int, *, fine: bool = False) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if fine:
        summary = {"tau_trials": [{"tau_given": 0.0, "tau": 0.0, "nonzeros": 128, "best_valid": 0.35}], "tau": 0.0,
                   "fine_nonzeros": 128, "fine_codebook_bytes": 708, "valid_recall_coarse": 0.34, "valid_recall_fine": 0.35}
    return {"model": "lightgcn", "name": name, "recipe": recipe, "recall@20": recall, "seed": seed, "summary": summary}


def test_coarse_row_names() -> None:
    b = _bench()
    assert b._coarse_name("c2f") == "c2f-coarse"
    assert b._coarse_name("c2f-seed2") == "c2f-coarse-seed2"
    assert b._coarse_name("c2f-scratch") == "c2f-scratch-coarse"
    assert b._coarse_name("c2f-scratch-seed3") == "c2f-scratch-coarse-seed3"


def test_fine_stage_section_pairs_each_start_with_its_own_coarse_stage() -> None:
    b = _bench()
    rows = [_row("c2f-coarse", "c2f-coarse", 0.377, 0), _row("c2f", "c2f", 0.371, 0, fine=True),
            _row("c2f-scratch-coarse", "c2f-coarse", 0.327, 0), _row("c2f-scratch", "c2f", 0.332, 0, fine=True),
            _row("c2f-scratch-coarse-seed1", "c2f-coarse", 0.324, 1), _row("c2f-scratch-seed1", "c2f", 0.323, 1, fine=True),
            _row("c2f-seed1", "c2f", 0.36, 1, fine=True)]  # no coarse row of its own: left out, not paired with another
    text = "\n".join(b._fine_stage_section(rows))
    assert "| warm (full table) | 0 |" in text and "0.3770 -> 0.3710 | -0.0060 |" in text
    assert "| random (paper) | 0 |" in text and "0.3270 -> 0.3320 | +0.0050 |" in text
    assert "| random (paper) | 1 |" in text and "0.3240 -> 0.3230 | -0.0010 |" in text
    assert "| warm (full table) | 1 |" not in text
    assert "warm (full table) start: mean -0.0060 over 1 seed(s)" in text and "higher in 0 of 1" in text
    assert "random (paper) start: mean +0.0020 over 2 seed(s)" in text and "higher in 1 of 2" in text
