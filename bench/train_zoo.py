"""Train a zoo model on Fashion-MNIST and ship it: ``toolkit/mobilec/models/weights/<name>_fashion_mnist.pt``.

The checkpoint is a plain state_dict; ``<name>_fashion_mnist.json`` beside it records the measured
test accuracy, params, MACs, train seconds, hyper-parameters, machine and the exact command.

    python bench/train_zoo.py --model mobilenet_v2 --epochs 15 --lr 0.1
    python bench/train_zoo.py --model vgg_small --epochs 2 --subset 2000 --out-dir /tmp/quick   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default: fashion-mnist)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2; use 1 when other jobs share the cores: "
                   "two threads on an oversubscribed machine ran ~10x slower than one)")
    p.add_argument("--subset", type=int, default=0, help="train on N images (and N/5 test) for a quick run")
    p.add_argument("--eval-every", type=int, default=0, help="print test accuracy every K epochs (0: only at the end)")
    p.add_argument("--channels-last", action="store_true", help="train in channels-last memory format")
    p.add_argument("--out-dir", type=Path, default=None, help="default: toolkit/mobilec/models/weights")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mobilec.data import load_dataset
    from mobilec.io import save_state_dict_atomic, write_json_atomic
    from mobilec.models import WEIGHTS_DIR, build_model, count_macs, count_params
    from mobilec.train import evaluate, fit

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_dataset(args.data)
    if args.subset:
        data = data.subset(args.subset, max(100, args.subset // 5), seed=args.seed)
    c = data.input_shape[0]
    model = build_model(args.model, num_classes=data.num_classes, in_channels=c, pretrained=False)
    params = count_params(model)
    macs = count_macs(model, torch.zeros(1, *data.input_shape))
    print(f"{args.model}: {params:,} params, {macs / 1e6:.1f}M MACs, data {data.name} "
          f"{len(data.x_train)}/{len(data.x_test)}, threads {torch.get_num_threads()}", flush=True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    steps_per_epoch = -(-len(data.x_train) // args.batch_size)
    evals: list[dict[str, float]] = []

    def on_step(step: int, m: torch.nn.Module) -> None:
        if args.eval_every and step % (steps_per_epoch * args.eval_every) == 0:
            acc = evaluate(m, data)
            evals.append({"epoch": step // steps_per_epoch, "test_acc": acc})
            print(f"  test acc after epoch {step // steps_per_epoch}: {acc:.4f}", flush=True)

    result = fit(model, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                 weight_decay=args.weight_decay, optimizer=args.optimizer, label_smoothing=args.label_smoothing,
                 seed=args.seed, on_step=on_step)
    model = model.to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    acc = evaluate(model, data)
    eval_s = time.perf_counter() - t0
    print(f"test accuracy {acc:.4f} ({len(data.x_test)} images, {eval_s:.1f}s); trained in {result.seconds:.0f}s",
          flush=True)

    out_dir = args.out_dir or WEIGHTS_DIR
    stem = f"{args.model}_{data.name.replace('-', '_')}"
    pt = out_dir / f"{stem}.pt"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_state_dict_atomic(state, pt)
    record = {
        "model": args.model,
        "data": data.name if not args.subset else f"{data.name} (subset {args.subset})",
        "checkpoint": pt.name,
        "test_accuracy": round(acc, 4),
        "test_images": len(data.x_test),
        "params": params,
        "macs": macs,
        "checkpoint_bytes": pt.stat().st_size,
        "train_seconds": round(result.seconds, 1),
        "epochs": args.epochs,
        "hyperparameters": {k: getattr(args, k) for k in ("lr", "batch_size", "weight_decay", "optimizer",
                                                          "label_smoothing", "seed", "threads")},
        "history": [{k: round(v, 5) for k, v in h.items()} for h in result.history],
        "test_evals": evals,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(pt.with_suffix(".json"), record)
    print(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {pt.with_suffix('.json').name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
