"""Activation clips of a trained DuQ run against its init and the activations' range.

    python bench/duq_clips.py RUN_DIR [--model mobilenet_v3_small] [--rule p95]

RUN_DIR is a ``mobilec export`` output folder of a duq/profit recipe (its ``compressed.pt``). For
every quantized layer input: the clip ``a`` the init rule gives on the pass's init batch (drawn as
the pass draws it for seed 0 and 1000 hold-out images), the trained ``a``, and the float input's
min, 99.9th percentile and max over 512 test images. Prints a table; quoted in docs/profit.md
("Activation init").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from mobilec.data import load_dataset
from mobilec.io import load_matching_state_dict
from mobilec.models import build_model, get_entry
from mobilec.passes.quant.profit import DuQTraining
from mobilec.passes.quant.qmodules import convert_to_duq, enable_quantizers, init_activation_quantizers, quant_layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--rule", default="p95", choices=["p95", "mse"], help="the init rule to compare with")
    args = p.parse_args()
    model = build_model(args.model, num_classes=10)
    load_matching_state_dict(model, get_entry(args.model).weights_path)
    ds = load_dataset("fashion-mnist")
    qm = convert_to_duq(model.eval(), weight_bits=4, act_bits=4)
    x_tr = DuQTraining(holdout_samples=1000)._split(ds, seed=0)[0]  # the pass's train part, then its init batch
    batch = x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))[:256]]
    init = init_activation_quantizers(qm, batch, rule=args.rule)
    trained = torch.load(args.run_dir / "compressed.pt", weights_only=True)
    layers = dict(quant_layers(qm))
    stats: dict[str, tuple[float, float, float]] = {}

    def record(name: str, x: torch.Tensor) -> None:
        v = x.detach().flatten()
        v999 = torch.quantile(v[:: max(1, v.numel() // 1_000_000)], 0.999)
        stats[name] = (float(v.min()), float(v999), float(v.max()))

    hooks = [layer.register_forward_pre_hook(lambda _m, inp, name=name: record(name, inp[0]))
             for name, layer in layers.items()]
    enable_quantizers(qm, acts=False, weights=False)
    with torch.no_grad():
        qm.eval()(ds.x_test[:512])
    for h in hooks:
        h.remove()
    print(f"{'layer':36s} {'kind':8s} {'init a':>7s} {'trained a':>9s} {'min':>7s} {'p99.9':>7s} {'max':>7s}")
    for name, layer in layers.items():
        a = float(F.softplus(trained[f"{name}.act_q.a_raw"]))
        lo, p999, hi = stats[name]
        print(f"{name:36s} {layer.act_q.kind:8s} {init[name]:7.3f} {a:9.3f} {lo:7.2f} {p999:7.2f} {hi:7.2f}")


if __name__ == "__main__":
    main()
