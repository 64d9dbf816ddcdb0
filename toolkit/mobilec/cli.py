"""Command line: thin — parses, calls mobilec.api, prints. Errors are one line and exit 2."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from mobilec.errors import MobilecError, one_line

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 3


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MobilecError into one 'error: ...' line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except MobilecError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: say so in one line; the traceback on request
            if os.environ.get("MOBILEC_DEBUG"):
                raise
            click.echo(
                f"internal error (a bug in mobilec, please report it): {type(exc).__name__}: {one_line(exc)}; "
                "rerun with MOBILEC_DEBUG=1 for the traceback",
                err=True,
            )
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: files written so far are complete; partial ones were discarded", err=True)
            sys.exit(130)

    return wrapper


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so atomic writers discard their partial files on the way out."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _OneLineErrors(click.Group):
    """Usage errors (unknown option, bad value) as one 'error: ...' line too, not click's usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `mobilec`: the help text, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "mobilec"
            click.echo(f"error: {one_line(exc.format_message())} (fix: see `{where} --help`)", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mobilec")
def main() -> None:
    """mobilec: compress a trained PyTorch model, export it to ExecuTorch / LiteRT / ONNX,
    verify the artifacts in their real runtimes and profile them."""


@main.command()
@click.option(
    "--recipe",
    "recipe",
    default="int8",
    show_default=True,
    help="Recipe name in recipes/, a .toml path, or several names a,b,c (sibling run folders + a comparison).",
)
@click.option(
    "--model",
    default=None,
    help="Zoo name (see `mobilec models`), path/to/file.py:factory, or a .pt2 file. Default: mobilenet_v2.",
)
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="state_dict for a file.py:factory model.")
@click.option("--data", default=None, help="fashion-mnist (default), digits, imagefolder:PATH, npz:PATH; "
              "recommenders (--model lightgcn): ml-100k, interactions:PATH.tsv.")
@click.option("--target", "targets", default=None, help="Comma-separated subset of executorch,tflite,onnx (default: the recipe's).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: mobilec-out/MODEL-RECIPE).")
@click.option("--force", is_flag=True, help="Replace the files of an earlier run in --out.")
@click.option("--allow-mismatch", is_flag=True, help="Keep artifacts that fail verification (flagged in the report).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed for calibration sampling and training.")
@click.option("--no-profile", is_flag=True, help="Skip host profiling of the verified artifacts.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last completed pass.")
@_friendly
def export(
    recipe: str,
    model: str | None,
    weights: Path | None,
    data: str | None,
    targets: str | None,
    out: Path | None,
    force: bool,
    allow_mismatch: bool,
    seed: int,
    no_profile: bool,
    resume: bool,
) -> None:
    """Compress a model with a recipe, export it, verify every artifact on the real test set."""
    from mobilec import api
    from mobilec.summary import print_run_summary

    names = [r.strip() for r in recipe.split(",") if r.strip()] if not recipe.endswith(".toml") else [recipe]
    if not names:
        raise MobilecError("--recipe is empty", hint="name a recipe, e.g. --recipe int8 (see `mobilec recipes`)")
    for name in names:  # load every recipe first: a typo in the third fails before the first trains
        api.Recipe.load(name)
    all_ok = True
    run_dirs = []
    for name in names:
        run_out = out / Path(name).stem if (out is not None and len(names) > 1) else out
        result = api.export(
            name,
            model=model,
            weights=weights,
            data=data,
            targets=targets,
            out=run_out,
            force=force,
            allow_mismatch=allow_mismatch,
            profile=not no_profile,
            seed=seed,
            command=api.current_command(),
            resume=resume,
        )
        if result.worker_rank:  # a torchrun worker: rank 0 exports, verifies and prints
            continue
        print_run_summary(result)
        run_dirs.append(result.out_dir)
        all_ok = all_ok and result.ok
    if len(names) > 1 and run_dirs:
        from mobilec.compare import compare as write_compare

        cmp_dir = out if out is not None else run_dirs[0].parent / f"{run_dirs[0].name.rsplit('-', 1)[0]}-compare"
        files = write_compare(run_dirs, cmp_dir)
        click.echo(f"comparison: {files[0]}")
    if not all_ok:
        sys.exit(EXIT_VERIFY_FAILED)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", default="host", show_default=True, help="host, adb, adb:SERIAL or an emulator serial (emulator-5554).")
@click.option("--profile", "profile_name", default=None, help="Device profile in profiles/ (see `mobilec devices --profiles`).")
@click.option("--runs", type=int, default=None, help="(default: the device profile's) Timed runs per repetition.")
@click.option("--warmup", type=int, default=None, help="(default: the device profile's) Untimed warm-up runs.")
@click.option("--threads", type=int, default=None, help="(default: the device profile's) Runtime threads.")
@click.option("--repetitions", type=int, default=None, help="(default: the device profile's) Repetitions (spread is reported).")
@click.option("--runner", type=click.Path(path_type=Path), default=None, help="On adb: executor_runner or benchmark_model binary to use.")
@click.option("--allow-charging", is_flag=True, help="On adb: measure energy while charging (flagged).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the measurement as JSON.")
@_friendly
def profile(
    artifact: Path,
    device: str,
    profile_name: str | None,
    runs: int | None,
    warmup: int | None,
    threads: int | None,
    repetitions: int | None,
    runner: Path | None,
    allow_charging: bool,
    json_out: Path | None,
) -> None:
    """Measure latency, memory (and energy where the device can) of an artifact in its own runtime."""
    from mobilec import api
    from mobilec.summary import print_measurement

    if not artifact.is_file():
        raise MobilecError(f"artifact {artifact} does not exist", hint="give the path of a .pte, .tflite or .onnx file")
    if json_out is not None:  # checked before measuring, not after
        existing = next((p for p in (json_out.parent, *json_out.parent.parents) if p.exists()), None)
        if not json_out.name or json_out.is_dir() or (existing is not None and not existing.is_dir()):
            raise MobilecError(f"--json {str(json_out)!r} is not a writable file path", hint="e.g. --json measurement.json")
    m = api.profile(
        artifact,
        device=device,
        profile=profile_name,
        runs=runs,
        warmup=warmup,
        threads=threads,
        repetitions=repetitions,
        runner=runner,
        allow_charging=allow_charging,
    )
    print_measurement(m)
    if json_out is not None:
        from mobilec.io import write_json_atomic

        write_json_atomic(json_out, m.to_dict())


@main.command()
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (runs: default mobilec-out/compare; --bench: default beside the JSON).")
@click.option("--bench", "benches", multiple=True, type=click.Path(path_type=Path),
              help="Render a benchmark's JSON (bench/results/NAME.json) into NAME.md's table block and Pareto PNGs.")
@click.option("--metric", default=None, help="--bench: the quality column to plot (default: accuracy if present).")
@click.option("--size-key", default=None, help="--bench: the size column (default: size_bytes if present).")
@click.option("--latency-key", default=None, help="--bench: the latency column (default: latency_ms_p50 if present).")
@click.option("--group-by", default=None, help="--bench: row keys that split tables/plots (default model,data,device; '' = none).")
@click.option("--columns", default=None, help="--bench: comma-separated table columns (default: every key present).")
@click.option("--check", is_flag=True, help="--bench: write nothing; fail if NAME.md's rendered block is out of date.")
@_friendly
def compare(runs: tuple[Path, ...], out: Path | None, benches: tuple[Path, ...], metric: str | None, size_key: str | None,
            latency_key: str | None, group_by: str | None, columns: str | None, check: bool) -> None:
    """Compare runs (folders with report.json): a table and accuracy-vs-size/latency Pareto plots.

    With --bench, regenerate a benchmark page's table and plots from its JSON instead."""
    if benches:
        if runs:
            raise MobilecError("give run folders or --bench files, not both", hint="run `mobilec compare` twice")
        from mobilec.bench_render import render_bench_cli

        for bench in benches:
            for path in render_bench_cli(bench, out=out, metric=metric, size_key=size_key, latency_key=latency_key,
                                         group_by=group_by, columns=columns, check=check):
                click.echo(f"{path} is up to date" if check else str(path))
        return
    given = [o for o, v in (("--metric", metric), ("--size-key", size_key), ("--latency-key", latency_key),
                            ("--group-by", group_by), ("--columns", columns), ("--check", check or None)) if v is not None]
    if given:
        raise MobilecError(f"{', '.join(given)} only apply with --bench", hint="drop them, or add --bench bench/results/NAME.json")
    if not runs:
        raise MobilecError("no run folders given", hint="mobilec compare RUN_DIR [RUN_DIR ...], or --bench bench/results/NAME.json")
    from mobilec.compare import compare as write_compare

    for path in write_compare(list(runs), out if out is not None else Path("mobilec-out/compare")):
        click.echo(str(path))


@main.command()
@_friendly
def recipes() -> None:
    """List the recipes in recipes/ with their descriptions."""
    from mobilec.recipe import available_recipes, recipes_dir

    items = available_recipes()
    if not items:
        raise MobilecError(f"no recipes found in {recipes_dir()}", hint="set MOBILEC_RECIPES_DIR to a folder of .toml recipes")
    width = max(map(len, items))
    for name, desc in items.items():
        click.echo(f"{name:<{width}}  {desc}")


@main.command()
@_friendly
def passes() -> None:
    """List the registered compression passes."""
    from mobilec.registry import list_passes

    items = list_passes()
    width = max(map(len, items))
    for name, cls in items.items():
        click.echo(f"{name:<{width}}  {cls.summary}")


@main.command()
@_friendly
def models() -> None:
    """List the reference models in the zoo and their shipped checkpoints."""
    import json

    from mobilec.models import get_entry, list_models

    for name in list_models():
        entry = get_entry(name)
        path = entry.weights_path
        if path is None:
            shipped = "no shipped checkpoint (--weights W)"
        else:
            meta_path = path.with_suffix(".json")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            acc = meta.get("test_accuracy")
            shipped = f"{entry.default_data} checkpoint" + (f", {acc:.2%} test top-1" if acc is not None else "")
        click.echo(f"{name:<20}  {entry.description}; {shipped}")


@main.command()
@click.option("--profiles", "show_profiles", is_flag=True, help="List device profiles instead of attached devices.")
@_friendly
def devices(show_profiles: bool) -> None:
    """List attached phones and emulators (adb), or the device profiles."""
    from mobilec.profile import list_devices, list_profiles

    if show_profiles:
        for name, desc in list_profiles().items():
            click.echo(f"{name:<18}  {desc}")
        return
    found = list_devices()
    if not found:
        click.echo("no devices attached (adb devices lists none)")
    for d in found:
        click.echo("  ".join(f"{k}={v}" for k, v in (d.to_dict() if hasattr(d, "to_dict") else d).items()))


@main.group()
def android() -> None:
    """Android demo app helpers."""


@android.command("bundle")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--app", type=click.Path(path_type=Path), default=None, help="The demo app folder (default: android_demo/).")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="The run's report.json (default: next to the artifact).")
@click.option("--data", default=None, help="Data set for labels, normalization and the sample image (default: from the report).")
@click.option("--sample-index", default=0, show_default=True, help="Test-split index of the bundled sample image.")
@click.option("--top-k", default=10, show_default=True, help="Top-K kept for recommender artifacts.")
@click.option("--force", is_flag=True, help="Replace an existing asset of the same name.")
@_friendly
def android_bundle(
    artifact: Path, app: Path | None, report: Path | None, data: str | None, sample_index: int, top_k: int, force: bool
) -> None:
    """Copy an artifact and its metadata (shape, normalization, labels) into the demo app's assets."""
    from mobilec.android import bundle

    kwargs: dict[str, Any] = {"force": force, "sample_index": sample_index, "top_k": top_k, "report": report}
    if app is not None:
        kwargs["app"] = app
    if data is not None:
        from mobilec.data import load_dataset

        kwargs["dataset"] = load_dataset(data)
    result = bundle(artifact, **kwargs)
    click.echo(str(result))


if __name__ == "__main__":
    main()
