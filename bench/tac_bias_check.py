"""Check the int32 bias rounding emulation on a TAC/binary-all run: eager vs artifact with and without it.

Loads a run folder of ``bench/tac.py`` (``compressed.pt`` + ``model.pte``), runs the first N
Fashion-MNIST test images through the artifact and the eager model, then re-runs
``align_thresholds`` on the eager model (its grids are fixed, so only ``bias_delta`` — the int8
kernels' bias rounding — is added where missing), reloads it from its state dict and compares again.

    python bench/tac_bias_check.py runs/bench-tac/mobilenet_v2-binary-all --model mobilenet_v2 --images 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from tac_rounding_check import load_run, load_tac_model

    from mobilec.passes.binary_export import align_thresholds

    model, ds, x, art = load_run(args.run, args.model, args.images)
    with torch.no_grad():
        before = model(x).numpy()
    align_thresholds(model, (x[:1],), [ds.x_train[i * 32 : (i + 1) * 32] for i in range(4)])
    with torch.no_grad():
        after = load_tac_model(args.model, model.state_dict())(x).numpy()
    for what, e in (("as saved", before), ("with the int32 bias rounding (reloaded)", after)):
        print(f"{len(x)} images, eager {what}: agreement with the artifact {(e.argmax(1) == art.argmax(1)).mean():.4f}, "
              f"max |logit diff| {np.abs(e - art).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
