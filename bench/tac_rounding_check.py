"""Check where a TAC/binary-all artifact departs from its eager model: the int8 rounding of layer outputs.

Loads a run folder of ``bench/tac.py`` (``compressed.pt`` + ``model.pte``), runs the first N
Fashion-MNIST test images through the artifact and through the eager model, then again through
the eager model with every binary layer's output fake-quantized on the int8 grid the artifact
uses (forward hooks on the module after the conv: the conv-bn-act block, or the BatchNorm of a
linear bottleneck). Written for mobilenet_v2 / vgg_small structures.

This is how the artifact/eager mismatch of the first mobilenet_v2 runs was found. Since then the
passes put these roundings into the eager model itself (``out_qparams`` + ``OutputRounding``
hooks, restored by ``restructure_like``): for such a run both lines print the same agreement
(the extra hooks round values already on their grid).

    python bench/tac_rounding_check.py runs/bench-tac/mobilenet_v2-tac --model mobilenet_v2 --images 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))


def load_tac_model(model_name: str, state_dict: dict) -> Any:
    """The zoo model restructured like a TAC/binary-all state dict, loaded with it, in eval mode."""
    from mobilec.models import build_model
    from mobilec.passes.binarize import restructure_like

    model = restructure_like(build_model(model_name, pretrained=False), state_dict)
    model.load_state_dict(state_dict)
    return model.eval()


def load_run(run: Path, model_name: str, images: int) -> tuple:
    """(eager model, dataset, first ``images`` test inputs, the .pte's logits on them) of a bench/tac.py run folder."""
    import numpy as np
    import torch

    from mobilec.data import load_dataset
    from mobilec.runtimes import open_artifact

    torch.set_num_threads(1)
    model = load_tac_model(model_name, torch.load(run / "compressed.pt", weights_only=True))
    ds = load_dataset("fashion-mnist")
    x = ds.x_test[:images]
    session = open_artifact(run / "model.pte")
    art = np.concatenate([session.run(x[i : i + 1].numpy()) for i in range(len(x))])
    return model, ds, x, art


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--images", type=int, default=300)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from torch import nn

    model, _ds, x, art = load_run(args.run, args.model, args.images)
    with torch.no_grad():
        eager = model(x).numpy()
    mods = dict(model.named_modules())
    hooks = 0
    for name, m in mods.items():
        q = m._buffers.get("out_qparams")
        if q is None or float(q[2]) > 0:  # no grid, or the layer already applies it (linear layers)
            continue
        parent, _, idx = name.rpartition(".")
        block = mods[parent]
        is_cba = idx == "0" and isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], nn.BatchNorm2d)
        target = block if is_cba else mods[f"{parent}.{int(idx) + 1}"]
        scale, zp = float(q[0]), int(q[1])
        target.register_forward_hook(lambda _m, _i, o, s=scale, z=zp: torch.fake_quantize_per_tensor_affine(o, s, z, -128, 127))
        hooks += 1
    with torch.no_grad():
        sim = model(x).numpy()
    print(f"{len(x)} images; top-1 agreement artifact vs eager: {(eager.argmax(1) == art.argmax(1)).mean():.4f}")
    print(f"artifact vs eager with {hooks} layer outputs rounded to the artifact's int8 grids: "
          f"{(sim.argmax(1) == art.argmax(1)).mean():.4f}, max |logit diff| {np.abs(sim - art).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
