"""bench/tac.py: the goals block measures the recipes, and lists bench probe files apart from them."""

from __future__ import annotations

from typing import Any

from bench_support import load_bench


def _row(recipe: str, accuracy: float, images: int = 80_000) -> dict[str, Any]:
    return {"model": "m", "recipe": recipe, "target": "executorch", "accuracy": accuracy, "train_images_seen": images}


def test_goals_name_recipes_and_probes_apart() -> None:
    tac = load_bench("tac")
    rows = [_row("fp32", 0.92, 0), _row("binary-all", 0.50), _row("tac", 0.89),
            _row("bench/recipes/long.toml", 0.87, 1_440_000)]
    goals = tac.render(rows, {"machine": {}, "command": "x"}).split("## Goals")[1].split("##")[0]
    assert "m / executorch: tac - binary-all = +39.00 points (goal >= +2): met" in goals
    assert "m / executorch: fp32 - tac = 3.00 points (goal <= 4): met" in goals
    assert "fp32 - bench/recipes/long.toml = 5.00 points (a bench probe, 1,440,000 images; under 4: no)" in goals
    assert "long.toml - binary-all" not in goals  # probes are not the tac - binary-all comparison
