"""Training throughput of :func:`mobilec.train.fit` in the contiguous (NCHW) vs channels-last memory format.

``fit`` trains in channels-last by default (``channels_last=True``); this bench is the measurement
behind that default. For each zoo model and input shape, the float model and its TAC-binarized version (the
``tac`` pass's binary layers, ``keep_depthwise`` as given) are trained with distillation from the
float model, as the tac / finetune passes do (Adam, batch 128, augmentation), on Fashion-MNIST as
stored (1×28×28) and converted to 3×32×32 (the grey value in every channel: the layout an RGB
dataset gives; the shipped checkpoints with the first conv split over the 3 channels, random init
for the models without one). With one channel the
augmented batches already have channels-last strides (a 1-channel tensor is both layouts), so
there the default changes little; with 3 channels the format is the model's choice.
Each timed call is a whole ``fit`` over ``--steps`` batches, so layout conversions and the data
pipeline are in the figure. Formats and variants take turns, ``--rounds`` times (round 0 is an
untimed warm-up), and each figure is the median, so a slow spell of this shared host lands on
every variant alike. The DuQ QAT trainer (PROFIT / DuQ passes) is timed the same way per step, its
batches channels-last or not (``Trainer(channels_last=...)``). Writes ``bench/results/train_speed.{json,md}``.

    python bench/train_speed.py
    python bench/train_speed.py --models mobilenet_v2 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))

MODELS = ("vgg_small", "resnet_small", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small")
SHAPES = {"1x28x28": None, "3x32x32": (3, 32, 32)}


def variants(name: str, data: Any, *, binary: bool = True) -> dict[str, Any]:
    """``{label: model}``: the float model and its tac-binarized copies (keep_depthwise for MobileNets)."""
    from mobilec.models import build_model, get_entry
    from mobilec.passes.binarize import TACPass

    entry = get_entry(name)
    shipped = entry.weights_path is not None and entry.weights_path.is_file()
    channels = data.input_shape[0]
    fp = build_model(name, num_classes=data.num_classes, in_channels=channels, pretrained=shipped and channels == 1)
    if shipped and channels > 1:
        fp.load_state_dict(_grey_to_channels(build_model(name, num_classes=data.num_classes, in_channels=1,
                                                         pretrained=True).state_dict(), fp.state_dict()))
    out = {"fp32": fp}
    options = [("tac", False)] + ([("tac-keep-depthwise", True)] if name.startswith("mobilenet") else [])
    for label, keep_dw in options if binary else []:
        model = copy.deepcopy(fp)
        tac = TACPass(keep_depthwise=keep_dw, act_threshold="zero")
        tac.binarize(model, tac.plan(model, (data.x_train[:1],)), data, 0)
        out[label] = model
    return out


def _grey_to_channels(grey: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The 1-channel checkpoint for a C-channel model, the first conv's weights split evenly over the C
    channels: a trained net for grey-in-every-channel inputs (mobilenet_v2 / v3_small: 0.89 / 0.88 top-1
    on 256 test images at 3x32x32), because a random-init DuQ mobilenet_v3_small diverges within 3 steps."""
    out = dict(grey)
    for key, value in grey.items():
        want = target[key].shape
        if value.shape != want:
            if not (value.ndim == 4 and value.shape[1] == 1 and value.shape[0] == want[0]):
                raise SystemExit(f"cannot map {key} {tuple(value.shape)} onto {tuple(want)}")
            out[key] = value.repeat(1, want[1], 1, 1) / want[1]
    return out


def measure(name: str, data: Any, steps: int, rounds: int, batch_size: int) -> dict[str, Any]:
    """Images per second of ``fit`` per variant and memory format, and the channels-last speed-up."""
    from mobilec.train import fit

    sub = data.subset(steps * batch_size, 1)
    models = variants(name, data)
    teacher = copy.deepcopy(models["fp32"]).eval()
    seconds: dict[tuple[str, bool], list[float]] = {}
    for r in range(rounds + 1):
        for label, model in models.items():
            for cl in (False, True):
                res = fit(model, sub, epochs=1, lr=1e-5, batch_size=batch_size, optimizer="adam", weight_decay=0.0,
                          teacher=teacher, kd_weight=0.7, progress=False, channels_last=cl, seed=r)
                if r:
                    seconds.setdefault((label, cl), []).append(res.seconds)
    out: dict[str, Any] = {}
    for label in models:
        nchw = statistics.median(seconds[(label, False)])
        nhwc = statistics.median(seconds[(label, True)])
        images = steps * batch_size
        out[label] = {"contiguous_images_per_s": round(images / nchw, 1), "channels_last_images_per_s": round(images / nhwc, 1),
                      "speedup": round(nchw / nhwc, 3), "timed_calls": len(seconds[(label, True)])}
    return out


def measure_duq(name: str, data: Any, steps: int, rounds: int) -> dict[str, Any]:
    """Seconds per step of the DuQ pass's Trainer (batch 64, no distillation, as ``bench/profit.py --step-time``)
    for the float model and its DuQ W4A4 version (fused kernels), with and without channels-last batches."""
    import torch

    from mobilec.passes.quant import qmodules as qm
    from mobilec.passes.quant.duq import enable_fused_kernels
    from mobilec.passes.quant.trainer import DistInfo, Trainer

    x, y = data.x_train[:4096], data.y_train[:4096]
    zero = (-torch.tensor(data.mean) / torch.tensor(data.std)).view(1, -1, 1, 1)
    fp = variants(name, data, binary=False)["fp32"]
    q = qm.convert_to_duq(copy.deepcopy(fp), weight_bits=4, act_bits=4)
    qm.init_activation_quantizers(q, x[:256])
    qm.init_weight_quantizers(q)
    qm.enable_quantizers(q, acts=True, weights=True)
    if enable_fused_kernels(True) is not None:
        raise SystemExit("the fused DuQ kernels did not build here")
    times: dict[tuple[str, bool], list[float]] = {}
    try:
        trainers = {(label, cl): Trainer(m, x, y, teacher=None, batch_size=64, weight_decay=2e-5, quant_lr_scale=0.01,
                                         augment=True, hflip=False, zero=zero, seed=0, ema_decay=0.0, dist=DistInfo(),
                                         channels_last=cl)
                    for label, m in (("fp32", fp), ("duq_w4a4_fused", q)) for cl in (False, True)}
        for r in range(rounds + 1):
            for key, tr in trainers.items():
                tr.step_seconds.clear()
                tr.run_phase(key[0], 3 if r == 0 else steps, lr=1e-4)
                if r:
                    times.setdefault(key, []).extend(tr.step_seconds)
    finally:
        enable_fused_kernels(False)
    out: dict[str, Any] = {}
    for label in ("fp32", "duq_w4a4_fused"):
        nchw, nhwc = (statistics.median(times[(label, cl)]) for cl in (False, True))
        out[label] = {"contiguous_step_seconds": round(nchw, 4), "channels_last_step_seconds": round(nhwc, 4),
                      "speedup": round(nchw / nhwc, 3), "timed_steps": len(times[(label, True)])}
    for cl, key in ((False, "contiguous"), (True, "channels_last")):
        out[f"duq_vs_fp32_{key}"] = round(statistics.median(times[("duq_w4a4_fused", cl)])
                                          / statistics.median(times[("fp32", cl)]), 3)
    return out


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = ["# Training throughput: contiguous (NCHW) vs channels-last", "",
             f"`{meta['command']}` on {meta['machine']['cpu']} ({meta['threads']} threads), CPU only, shared host; "
             f"{meta['steps']} steps of batch {meta['batch_size']} per timed `fit` call, median of {meta['rounds']} rounds "
             "(formats and variants take turns). Distillation from the float model, Adam, augmentation on, Fashion-MNIST "
             "as stored (1x28x28) and as 3x32x32 (grey in every channel; the shipped checkpoints with the first conv split "
             "over the channels, random init where none is shipped). With one channel the "
             "augmented batches already have channels-last strides, so NCHW there means NCHW weights only.",
             "", "| input | model | variant | NCHW images/s | channels-last images/s | speed-up |",
             "|---|---|---|---:|---:|---:|"]
    for shape, models in result["shapes"].items():
        for model, rows in models.items():
            for label, row in rows.items():
                lines.append(f"| {shape} | {model} | {label} | {row['contiguous_images_per_s']:.0f} | "
                             f"{row['channels_last_images_per_s']:.0f} | {row['speedup']:.2f}x |")
    if result.get("duq"):
        lines += ["", "## DuQ QAT trainer (`passes/quant/trainer.py`): seconds per step, batch 64, fused kernels", "",
                  "The PROFIT/DuQ passes' own loop, timed per step (median), as `bench/profit.py --step-time` does.", "",
                  "| input | model | variant | NCHW s/step | channels-last s/step | speed-up |", "|---|---|---|---:|---:|---:|"]
        for shape, models in result["duq"].items():
            for model, rows in models.items():
                for label in ("fp32", "duq_w4a4_fused"):
                    row = rows[label]
                    lines.append(f"| {shape} | {model} | {label} | {row['contiguous_step_seconds']:.4f} | "
                                 f"{row['channels_last_step_seconds']:.4f} | {row['speedup']:.2f}x |")
        lines += ["", "DuQ W4A4 step / fp32 step: " + "; ".join(
            f"{shape} {model} {rows['duq_vs_fp32_contiguous']:.2f}x NCHW, {rows['duq_vs_fp32_channels_last']:.2f}x channels-last"
            for shape, models in result["duq"].items() for model, rows in models.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--steps", type=int, default=8, help="batches per timed fit call")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duq-models", nargs="*", default=["mobilenet_v2", "mobilenet_v3_small"],
                   help="models whose DuQ QAT trainer step is timed too (none: skip)")
    p.add_argument("--duq-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    args = p.parse_args(argv)

    import torch

    from mobilec.data import load_dataset
    from mobilec.io import write_json_atomic, write_text_atomic
    from mobilec.report import machine_description

    torch.set_num_threads(args.threads)
    meta = {"machine": machine_description(), "threads": args.threads, "steps": args.steps,
            "batch_size": args.batch_size, "rounds": args.rounds,
            "command": " ".join(["python bench/train_speed.py", *(shlex.quote(a) for a in (argv or sys.argv[1:]))])}
    result: dict[str, Any] = {"meta": meta, "shapes": {}}
    for shape in args.shapes:
        data = load_dataset("fashion-mnist", input_shape=SHAPES[shape])
        for name in args.models:
            result["shapes"].setdefault(shape, {})[name] = measure(name, data, args.steps, args.rounds, args.batch_size)
            print(shape, name, result["shapes"][shape][name], flush=True)
        for name in args.duq_models:
            result.setdefault("duq", {}).setdefault(shape, {})[name] = measure_duq(name, data, args.duq_steps, args.rounds)
            print(shape, name, "duq", result["duq"][shape][name], flush=True)
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
