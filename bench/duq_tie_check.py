"""What ``break_rounding_ties`` changes in DuQ models trained before it existed.

    python bench/duq_tie_check.py /tmp/bench/runs        # the --workdir of bench/profit.py runs

For every ``<run>/seed*/checkpoints/pass-*.pt`` of a duq/profit run under the folder: the folded
model's eager test accuracy as saved, the number of channels the tie breaker moves, and the eager
test accuracy after it. Quoted in docs/profit.md ("Exact rounding ties").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mobilec import fx_checkpoint
from mobilec.checkpoint import load_checkpoint
from mobilec.data import load_dataset
from mobilec.passes.quant.qmodules import break_rounding_ties
from mobilec.passes.quant.trainer import accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    for path in sorted(args.runs.glob("*/seed*/checkpoints/pass-*.pt")):
        model = load_checkpoint(path)["model"]
        qm = (fx_checkpoint.decode(model) if fx_checkpoint.is_encoded(model) else model).eval()
        with torch.no_grad():
            before = accuracy(qm, ds.x_test, ds.y_test)
            moved = break_rounding_ties(qm)
            after = accuracy(qm, ds.x_test, ds.y_test) if moved else before
        run, seed = path.parts[-4], path.parts[-3]
        print(f"{run} {seed} channels moved {sum(len(v) for v in moved.values())} eager {before:.4f} -> {after:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
