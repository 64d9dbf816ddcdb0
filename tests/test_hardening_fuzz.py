"""Fuzzing (issue 9): generated `mobilec export` argument lists and recipe TOML documents.

The only outcomes allowed: a valid run plan, or a non-zero exit with exactly one clear error line;
never a traceback or an "internal error", never a partial output folder. The CLI runs in-process
and stops right after planning (the heavy work is replaced by a recorder): parsing, validation,
data and model loading and output-folder checks are the real code.
"""

from __future__ import annotations

import functools
import itertools
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_support import fuzz_examples, record, write_tiny_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilec import api
from mobilec.cli import main
from mobilec.errors import MobilecError
from mobilec.recipe import TARGETS, Recipe, dump_toml

PLANNED = 99  # exit code of the recorder that replaces the heavy work


class _Evil:
    def __reduce__(self):  # pragma: no cover - never executed by the safe loader
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    inp = write_tiny_inputs(root / "inputs")
    f = {**inp, "root": root}
    good = inp["weights"].read_bytes()
    for name, content in {"empty.pt": b"", "garbage.pt": b"\x80\x02garbage" * 50, "truncated.pt": good[: len(good) // 2],
                          "list.pt": pickle.dumps([1, 2, 3])}.items():
        (root / name).write_bytes(content)
        f[name] = root / name
    torch.save({"w": torch.zeros(1), "x": _Evil()}, root / "evil.pt")
    torch.save(torch.nn.Linear(3, 3).state_dict(), root / "wrongshape.pt")
    torch.save({k: v.to(torch.int32) for k, v in torch.load(inp["weights"]).items()}, root / "wrongdtype.pt")
    for name in ("evil.pt", "wrongshape.pt", "wrongdtype.pt"):
        f[name] = root / name
    (root / "syntax.py").write_text("def make(:\n")
    (root / "raises.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    (root / "notmodule.py").write_text("def make():\n    return 42\n")
    (root / "wrongout.py").write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n")
    (root / "broken.toml").write_text("description = \n[[passes]\n")
    (root / "badpass.toml").write_text('[[passes]]\ntype = "ptq"\nbits = 3\n')
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    (root / "afile").write_text("not a folder")
    existing = root / "existing-run"
    existing.mkdir()
    (existing / "report.json").write_text("{}")
    for name in ("broken.toml", "badpass.toml", "binary.toml", "afile", "syntax.py", "raises.py", "notmodule.py", "wrongout.py"):
        f[name] = root / name
    f["existing-run"] = existing
    return f


def _pools(f: dict[str, Path]) -> dict[str, list[str]]:
    tiny = f"{f['model']}:make"
    return {
        "--recipe": ["int8", "fp32", str(f["recipe"]), "int9", "", ",", "int8,fp32", "int8,nope", str(f["broken.toml"]),
                     str(f["badpass.toml"]), str(f["binary.toml"]), str(f["root"] / "missing.toml"), "../etc/passwd", "tucker"],
        "--model": [tiny, tiny, str(f["model"]), f"{f['root'] / 'missing.py'}:make", f"{f['model']}:nope", f"{f['model']}:1bad",
                    "resnet999", str(f["root"] / "x.pt2"), f"{f['syntax.py']}:make", f"{f['raises.py']}:make",
                    f"{f['notmodule.py']}:make", f"{f['wrongout.py']}:make", "mobilenet_v2", ":"],
        "--weights": [str(f["weights"]), str(f["weights"])] + [str(f[n]) for n in (
            "empty.pt", "garbage.pt", "truncated.pt", "list.pt", "evil.pt", "wrongshape.pt", "wrongdtype.pt")]
            + [str(f["root"] / "missing.pt"), str(f["root"])],
        "--data": ["digits", "digits", "npz:" + str(f["root"] / "missing.npz"), "imagefolder:/nonexistent", "mnist-fashion",
                   "npz:" + str(f["garbage.pt"]), "", "imagefolder:" + str(f["afile"])],
        "--target": ["onnx", "executorch,tflite", "onnx,onnx", ",".join(TARGETS), "coreml", "", ",,", "onnx,coreml", "ONNX"],
        "--seed": ["0", "7", "-1", "abc", "1e3", "", str(2**70), "4294967295"],
    }


_FLAGS = ["--force", "--allow-mismatch", "--no-profile", "--resume"]
_JUNK = ["--bogus", "positional", "--out", "-x", "--seed", "--", "--recipe="]
_counter = itertools.count()


def _args(draw: st.DrawFn, f: dict[str, Path]) -> list[str]:
    pools = _pools(f)
    args = ["export"]
    for opt in draw(st.lists(st.sampled_from(sorted(pools)), max_size=6, unique=True)):
        value = draw(st.one_of(st.sampled_from(pools[opt]), st.text(max_size=12)) if draw(st.integers(0, 9)) == 0
                     else st.sampled_from(pools[opt]))
        args += [opt, value]
    out_kind = draw(st.sampled_from(["fresh", "fresh", "fresh", "none", "file", "under-file", "existing"]))
    if out_kind == "fresh":
        args += ["--out", str(f["root"] / "outs" / f"o{next(_counter)}")]
    elif out_kind == "file":
        args += ["--out", str(f["afile"])]
    elif out_kind == "under-file":
        args += ["--out", str(f["afile"] / "sub")]
    elif out_kind == "existing":
        args += ["--out", str(f["existing-run"])]
    args += draw(st.lists(st.sampled_from(_FLAGS), max_size=2, unique=True))
    if draw(st.integers(0, 7)) == 0:
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(_JUNK)))
    return args


def _snapshot(path: Path | None) -> object:
    if path is None or not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


@pytest.fixture(scope="module")
def planning(files: dict[str, Path]):
    """Stop every export right after its plan is made; cache data set loads (real loader, loaded once)."""
    plans: list[dict] = []
    mp = pytest.MonkeyPatch()

    def plan_reached(dataset, out_dir, report, model, seed, show_progress):
        plans.append({"out": out_dir, "recipe": report.recipe, "seed": seed})
        raise SystemExit(PLANNED)

    import mobilec.data

    mp.setattr(api, "_make_context", plan_reached)
    mp.setattr(mobilec.data, "load_dataset", functools.lru_cache(maxsize=8)(mobilec.data.load_dataset))
    yield plans
    mp.undo()


@settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_export_arguments_give_a_plan_or_one_error_line(data: st.DataObject, files: dict[str, Path], planning) -> None:
    args = _args(data.draw, files)
    out = Path(args[args.index("--out") + 1]) if "--out" in args[:-1] else None
    before = _snapshot(out)
    n_plans = len(planning)
    result = CliRunner().invoke(main, args)
    record("CLI argument lists")
    text = result.output
    assert "Traceback" not in text and "internal error" not in text, (args, text)
    if result.exit_code == PLANNED:
        plan = planning[-1]
        assert len(planning) == n_plans + 1
        assert plan["out"].is_dir() and not any(p.is_file() for p in plan["out"].rglob("*")
                                               if p.parent != files["existing-run"]), (args, "files before any work")
        assert 0 <= plan["seed"] < 2**32
        return
    assert result.exit_code != 0, (args, text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, text)
    assert _snapshot(out) == before, (args, "the failed run changed its output folder")


_toml_values = st.recursive(
    st.one_of(st.integers(-3, 300), st.floats(allow_nan=False), st.booleans(), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=5,
)
_pass_keys = st.sampled_from(["type", "bits", "calibration_batches", "batch_size", "per_channel", "epochs", "lr", "targets",
                              "ignore", "rank", "kd_weight", "x"])
_pass_types = st.sampled_from(["ptq", "finetune", "tucker", "duq", "profit", "binarize", "prune", "nope", ""])


@st.composite
def _recipe_text(draw: st.DrawFn) -> str:
    doc: dict = {}
    for key in draw(st.lists(st.sampled_from(["version", "description", "base", "junk"]), max_size=3, unique=True)):
        doc[key] = draw(st.one_of(_toml_values, st.sampled_from(["int8", "fp32", "nope", 1])))
    passes = []
    for _ in range(draw(st.integers(0, 3))):
        table = {"type": draw(_pass_types)} if draw(st.booleans()) else {}
        table.update(draw(st.dictionaries(_pass_keys, _toml_values, max_size=3)))
        passes.append(table)
    doc["passes"] = passes
    for section, keys in (("export", ["targets", "x"]), ("verify", ["min_top1_agreement", "max_abs_error", "max_samples"]),
                          ("profile", ["runs", "warmup", "threads"])):
        if draw(st.booleans()):
            doc[section] = draw(st.dictionaries(st.sampled_from(keys), _toml_values, max_size=2))
    try:
        text = dump_toml(doc)
    except TypeError:
        text = ""
    mutation = draw(st.integers(0, 5))
    if mutation == 0 and text:  # cut it anywhere
        text = text[: draw(st.integers(0, len(text)))]
    elif mutation == 1:  # splice random characters in
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.text(max_size=8)) + text[pos:]
    return text


@settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_recipe_text())
def test_fuzzed_recipe_files_give_a_recipe_or_one_clear_error(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-recipe.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    record("recipe TOML documents")
    try:
        rec = Recipe.load(str(path))
    except MobilecError as exc:
        assert str(exc) and "\n" not in str(exc), text
        assert str(path) in str(exc) or "recipe" in str(exc), str(exc)
    else:
        again = Recipe.from_dict(rec.to_dict(), name=rec.name, where="round trip")
        assert again.to_dict() == rec.to_dict()


# --- mobilec profile ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real (small) ONNX artifact, and broken or misnamed copies of it."""
    from mobilec.export import get_exporter

    root = tmp_path_factory.mktemp("fuzz-profile")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    good = get_exporter("onnx").export(model, (torch.randn(1, 1, 8, 8),), root / "model.onnx").path
    data = good.read_bytes()
    f = {"good": good, "root": root}
    for name, content in {"cut.onnx": data[: len(data) // 2], "empty.onnx": b"", "misnamed.pte": data,
                          "garbage.tflite": b"garbage" * 50, "model.bin": data}.items():
        (root / name).write_bytes(content)
        f[name] = root / name
    (root / "afile").write_text("x")
    f["afile"] = root / "afile"
    return f


@pytest.fixture(scope="module")
def profile_planning():
    """Stop every host profile right before its worker process starts (all checks done by then)."""
    from mobilec.profile.host import HostDevice

    plans: list[dict] = []
    mp = pytest.MonkeyPatch()

    def spawn(self, tmp, artifact, *, runs, warmup):
        plans.append({"artifact": artifact, "runs": runs, "warmup": warmup})
        raise SystemExit(PLANNED)

    mp.setattr(HostDevice, "_spawn", spawn)
    yield plans
    mp.undo()


def _profile_args(draw: st.DrawFn, f: dict[str, Path]) -> list[str]:
    from mobilec.profile import list_profiles

    counts = ["0", "1", "3", "-2", "abc", "", "1.5", str(2**40)]
    pools = {
        "--device": ["host", "host", "host", "adb", "adb:NOPE123", "emulator-5554", "", "gpu"],
        "--profile": [*list_profiles(), "nope", ""],
        "--runs": counts, "--warmup": counts, "--threads": counts, "--repetitions": counts,
        "--runner": [str(f["afile"]), str(f["root"] / "missing")],
        "--json": [str(f["root"] / "j" / f"m{next(_counter)}.json"), str(f["afile"] / "x.json")],
    }
    artifact = draw(st.sampled_from([str(f["good"])] * 4 + [str(f[n]) for n in ("cut.onnx", "empty.onnx", "misnamed.pte",
                                     "garbage.tflite", "model.bin", "afile")] + [str(f["root"] / "missing.onnx"),
                                                                                  str(f["root"])]))
    args = ["profile", artifact]
    for opt in draw(st.lists(st.sampled_from(sorted(pools)), max_size=5, unique=True)):
        value = draw(st.text(max_size=8)) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(pools[opt]))
        args += [opt, value]
    if draw(st.booleans()):
        args.append("--allow-charging")
    if draw(st.integers(0, 7)) == 0:
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(_JUNK)))
    return args


@settings(max_examples=fuzz_examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_profile_arguments_give_a_plan_or_one_error_line(data: st.DataObject, profile_files, profile_planning) -> None:
    args = _profile_args(data.draw, profile_files)
    json_out = Path(args[args.index("--json") + 1]) if "--json" in args[:-1] else None
    json_out = json_out if json_out is not None and json_out.name and not json_out.exists() else None
    n_plans = len(profile_planning)
    result = CliRunner().invoke(main, args)
    record("CLI argument lists (profile)")
    text = result.output
    assert "Traceback" not in text and "internal error" not in text, (args, text)
    if result.exit_code == PLANNED:
        assert len(profile_planning) == n_plans + 1
        plan = profile_planning[-1]
        assert plan["artifact"].resolve() == profile_files["good"].resolve() and plan["runs"] >= 1 and plan["warmup"] >= 0
        return
    assert result.exit_code != 0, (args, text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, text)
    assert json_out is None or not json_out.exists(), (args, "a JSON file was written for a failed profile")
