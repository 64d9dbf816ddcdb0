"""mobilec.android.bundle and the app's JVM core (android_demo/core), tested against each other.

Real artifacts are exported here from tiny models (ExecuTorch .pte with XNNPACK, LiteRT .tflite via
litert_torch) and bundled into a temporary copy of the app folder; the Java core module is compiled
with plain javac and reads what Python wrote (metadata, sample PNG) through the app's own parser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilec.android import METADATA_NAME, SAMPLE_NAME, SCHEMA, app_input_from_png, bundle
from mobilec.errors import MobilecError

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "android_demo"
RUN_TESTS = APP / "core" / "run-tests.sh"
FMNIST_DIR = Path(os.environ.get("MOBILEC_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
needs_java = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                                reason="javac/java not installed: the app's JVM core cannot be compiled here")
needs_fmnist = pytest.mark.skipif(not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


# --------------------------------------------------------------------------- tiny models and artifacts


class TinyClassifier(nn.Module):
    def __init__(self, size: int, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * ((size + 1) // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class TinyRecommender(nn.Module):
    """forward(user_ids) -> one score per item, like mobilec.recsys.LightGCN.forward."""

    def __init__(self, users: int = 6, items: int = 15, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.users = nn.Parameter(torch.randn(users, dim, generator=g))
        self.items = nn.Parameter(torch.randn(items, dim, generator=g))

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        return self.users[user_ids] @ self.items.T


def _export_pte(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(torch.export.export(model, (example,)), partitioner=[XnnpackPartitioner()])
    path.write_bytes(program.to_executorch().buffer)
    return path


def _export_tflite(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    import litert_torch

    litert_torch.convert(model, (example,)).export(str(path))
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Tiny real artifacts and the eager models they came from.

    The models are rebuilt from fixed seeds in every process; the exported files are made once and
    shared by pytest-xdist workers (a file lock over the session's common temp folder).
    """
    torch.manual_seed(0)
    fm = TinyClassifier(28).eval()
    dg = TinyClassifier(8).eval()
    rec = TinyRecommender().eval()
    out = _shared_dir(tmp_path_factory, "android-artifacts")
    paths = {"fm_pte": out / "fm" / "fm_tiny.pte", "digits_tflite": out / "digits_tiny.tflite", "rec_pte": out / "rec_tiny.pte"}
    from filelock import FileLock

    with FileLock(str(out) + ".lock"):
        if not all(p.is_file() for p in paths.values()):
            (out / "fm").mkdir(exist_ok=True)
            _export_pte(fm, torch.randn(1, 1, 28, 28), paths["fm_pte"])
            _export_tflite(dg, torch.randn(1, 1, 8, 8), paths["digits_tflite"])
            _export_pte(rec, torch.tensor([0]), paths["rec_pte"])
    return {"fm_model": fm, "digits_model": dg, "rec_model": rec, **paths}


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder common to all xdist workers of this session (their base temps share a parent)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A copy of android_demo without build outputs or anything already bundled."""
    dst = tmp_path / "android_demo"
    shutil.copytree(APP, dst, ignore=shutil.ignore_patterns("build", ".gradle", ".kotlin"))
    assets = dst / "app/src/main/assets"
    for f in assets.iterdir():
        if f.name != ".gitkeep":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    return dst


def _assets(app: Path) -> Path:
    return app / "app/src/main/assets"


def _write_report(folder: Path, artifact: Path, data_name: str) -> Path:
    rep = {
        "recipe": "tiny-test",
        "model": {"name": "tiny_classifier"},
        "data": {"name": data_name},
        "artifacts": [{"target": "executorch", "path": str(artifact), "status": "verified",
                       "verification": {"accuracy": 0.5, "top1_agreement": 1.0, "max_abs_error": 1e-6}}],
    }
    path = folder / "report.json"
    path.write_text(json.dumps(rep))
    return path


# --------------------------------------------------------------------------- the JVM core


@pytest.fixture(scope="module")
def jvm_core(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Compile android_demo/core with run-tests.sh (plain javac) and run its unit tests, once per session."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("javac/java not installed: the app's JVM core cannot be compiled here")
    build = _shared_dir(tmp_path_factory, "android-core-build")
    from filelock import FileLock

    with FileLock(str(build) + ".lock"):
        log = build / "run-tests.log"
        if not log.is_file():
            proc = subprocess.run(["bash", str(RUN_TESTS)], env={**os.environ, "MOBILEC_CORE_BUILD": str(build)},
                                  capture_output=True, text=True, timeout=300)
            (build / "run-tests.rc").write_text(str(proc.returncode))
            log.write_text(proc.stdout)
            (build / "run-tests.err").write_text(proc.stderr)
    return {"rc": int((build / "run-tests.rc").read_text()), "log": log.read_text(),
            "stderr": (build / "run-tests.err").read_text(), "classpath": f"{build}/main:{build}/test"}


def _jvm_input(got: dict, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """The input tensor the Java core built, from its raw float bits."""
    return np.array(got["input_bits"], dtype=np.int64).astype(np.uint32).view(np.float32).reshape(shape)


def _contract(jvm_core: dict[str, object], *args: str) -> dict:
    proc = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", str(jvm_core["classpath"]),
                           "dev.mobilec.core.ContractTool", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_java
def test_core_unit_tests_pass_with_plain_javac(jvm_core: dict[str, object]) -> None:
    assert jvm_core["rc"] == 0, f"{jvm_core['log']}\n{jvm_core['stderr']}"
    summary = str(jvm_core["log"]).strip().splitlines()[-1]
    passed, failed = (int(part.split()[0]) for part in summary.split(","))
    assert failed == 0 and passed >= 20, summary


@needs_java
def test_benchmark_json_written_by_the_app_matches_the_schema(jvm_core: dict[str, object]) -> None:
    keys = ["runtime", "model", "latencies_ms", "load_ms", "first_run_ms", "peak_memory_kb", "threads", "timed_window_ms",
            "error"]
    ok = _contract(jvm_core, "benchmark", "OK")  # the real runner with a fake session and a clock ticking 1.5 ms per read
    assert list(ok) == keys
    assert ok["runtime"] == "executorch" and ok["error"] is None and ok["threads"] == 2
    assert ok["latencies_ms"] == [1.5, 1.5, 1.5] and ok["load_ms"] == 1.5 and ok["first_run_ms"] == 1.5
    assert ok["peak_memory_kb"] == 51200
    t0, t1 = ok["timed_window_ms"]
    assert t1 - t0 == 3 * 2 * 1.5  # from before the first timed run to after the last
    bad = _contract(jvm_core, "benchmark", "FAIL")
    assert list(bad) == keys
    assert bad["latencies_ms"] == [] and bad["load_ms"] is None and bad["timed_window_ms"] is None
    assert bad["error"].startswith("IOException: /data/local/tmp/model.pte: open failed")


@needs_java
def test_jvm_top5_matches_numpy(jvm_core: dict[str, object]) -> None:
    logits = np.array([0.3, -1.2, 2.5, 2.5, 0.0, 7.25, -3.0], dtype=np.float32)
    labels = [f"c{i}" for i in range(len(logits))]
    got = _contract(jvm_core, "classify", json.dumps(labels), *[repr(float(v)) for v in logits])["top5"]
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:5]
    assert [g["index"] for g in got] == [int(i) for i in order]  # ties (2.5, 2.5) keep the lower index first
    np.testing.assert_allclose([g["probability"] for g in got], p[order], rtol=1e-6)


@pytest.mark.slow
@needs_java
def test_jvm_flatbuffer_reader_sees_the_inputs_the_runtimes_see(artifacts: dict, tmp_path: Path, jvm_core: dict) -> None:
    """The app reads input shapes from the files (ExecuTorch's Java API reports none): compare with the runtimes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from mobilec.runtimes import open_artifact

    for key, dtype in (("fm_pte", "float32"), ("digits_tflite", "float32"), ("rec_pte", "int64")):
        path: Path = artifacts[key]
        got = _contract(jvm_core, "inspect", str(path))
        assert "error" not in got, got
        if key != "rec_pte":  # RuntimeSession runs float models only; the recommender's shape is [1]
            assert tuple(got["shape"]) == open_artifact(path).input_shape, key
        else:
            assert got["shape"] == [1]
        assert got["dtype"] == dtype and got["num_inputs"] == 1 and got["input_quant"] is None, key
    # an int8-I/O model: the same LiteRT file with its input and output tensors rewritten to int8
    model = schema.ModelT.InitFromPackedBuf(Path(artifacts["digits_tflite"]).read_bytes(), 0)
    sg = model.subgraphs[0]
    for idx, (scale, zp) in ((sg.inputs[0], (0.0125, -7)), (sg.outputs[0], (0.25, 3))):
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zp]
        sg.tensors[idx].type, sg.tensors[idx].quantization = schema.TensorType.INT8, q
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    qpath = tmp_path / "q.tflite"
    qpath.write_bytes(builder.Output())
    got = _contract(jvm_core, "inspect", str(qpath))
    assert got["dtype"] == "float32"  # the app feeds normalized floats and quantizes them itself
    assert got["input_quant"] == {"dtype": "int8", "scale": 0.0125, "zero_point": -7}
    assert got["output_quant"] == {"dtype": "int8", "scale": 0.25, "zero_point": 3}
    cut = tmp_path / "cut.pte"
    cut.write_bytes(Path(artifacts["fm_pte"]).read_bytes()[:40])
    assert "truncated or corrupted" in _contract(jvm_core, "inspect", str(cut))["error"]


# --------------------------------------------------------------------------- bundling real artifacts


@pytest.mark.slow
@needs_fmnist
def test_bundle_pte_writes_metadata_matching_the_artifact(artifacts: dict, app: Path) -> None:
    from executorch.runtime import Runtime

    from mobilec.data import FASHION_MNIST_CLASSES, read_idx

    pte: Path = artifacts["fm_pte"]
    _write_report(pte.parent, pte, "fashion-mnist")
    result = bundle(pte, app=app)  # data set and recipe come from report.json beside the artifact
    assets = _assets(app)
    meta = json.loads((assets / METADATA_NAME).read_text())
    assert meta == result.metadata
    assert (assets / pte.name).read_bytes() == pte.read_bytes() and result.copied
    assert meta["schema"] == SCHEMA and meta["runtime"] == "executorch" and meta["task"] == "classification"
    et_shape = list(Runtime.get().load_program(pte).load_method("forward").metadata.input_tensor_meta(0).sizes())
    assert meta["input"] == {"shape": et_shape, "dtype": "float32", "layout": "NCHW"} and et_shape == [1, 1, 28, 28]
    assert meta["model_bytes"] == pte.stat().st_size
    assert meta["labels"] == FASHION_MNIST_CLASSES and meta["dataset"] == "fashion-mnist"
    assert meta["preprocessing"]["mean"] == [0.286] and meta["preprocessing"]["std"] == [0.353]
    assert meta["recipe"] == "tiny-test" and meta["model_name"] == "tiny_classifier"
    assert meta["verification"]["status"] == "verified" and meta["verification"]["top1_agreement"] == 1.0

    # the sample is the real first Fashion-MNIST test image, with its true label
    from PIL import Image

    png = (assets / SAMPLE_NAME).read_bytes()
    with Image.open(assets / SAMPLE_NAME) as im:
        assert im.mode == "L" and im.size == (28, 28)
        pixels = np.asarray(im)
    raw_images = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    raw_labels = read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(pixels, raw_images[0])
    s = meta["sample"]
    assert s["true_label"] == int(raw_labels[0]) and s["true_label_name"] == FASHION_MNIST_CLASSES[int(raw_labels[0])]
    assert s["pixels_exact"] is True

    # the expected prediction is what the model gives on exactly the tensor the app will build
    x = app_input_from_png(png, [0.286], [0.353])
    eager = artifacts["fm_model"](torch.from_numpy(x)).detach().numpy().reshape(-1)
    assert s["expected_top1"] == int(np.argmax(eager))
    probs = [t["probability"] for t in s["expected_top5"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    assert s["expected_top5"][0]["index"] == s["expected_top1"]


@pytest.mark.slow
@needs_java
@needs_fmnist
def test_jvm_core_reads_what_python_bundled(artifacts: dict, app: Path, jvm_core: dict[str, object]) -> None:
    """Cross-language contract: Python writes metadata + PNG, the app's Java parser reads them."""
    from mobilec.runtimes import open_artifact

    pte: Path = artifacts["fm_pte"]
    result = bundle(pte, app=app, dataset="fashion-mnist", sample_index=3)
    meta = result.metadata
    got = _contract(jvm_core, "metadata", str(_assets(app)))
    assert "error" not in got, got
    for key in ("schema", "model_file", "model_sha256", "model_bytes", "runtime", "task", "labels", "recipe", "dataset"):
        assert got[key] == meta[key], key
    assert got["input_shape"] == meta["input"]["shape"] and got["input_dtype"] == "float32"
    assert got["model_file_exists"] is True
    for key in ("mean", "std"):  # Java parsed the JSON numbers into float32
        assert np.array_equal(np.float32(got[key]), np.float32(meta["preprocessing"][key])), key
    s = meta["sample"]
    assert (got["sample_image"], got["true_label"], got["expected_top1"]) == (SAMPLE_NAME, s["true_label"], s["expected_top1"])
    assert got["expected_top1_label"] == s["expected_top1_label"]
    assert [e["index"] for e in got["expected_top5"]] == [e["index"] for e in s["expected_top5"]]
    assert np.array_equal(np.float32([e["probability"] for e in got["expected_top5"]]),
                          np.float32([e["probability"] for e in s["expected_top5"]]))
    # the app's preprocessing of the PNG is bit-identical to the tensor the host runtime was given
    jvm_x = _jvm_input(got, meta["input"]["shape"])
    py_x = app_input_from_png(result.sample_image.read_bytes(), meta["preprocessing"]["mean"], meta["preprocessing"]["std"])
    assert np.array_equal(jvm_x.view(np.uint32), py_x.view(np.uint32))
    logits = open_artifact(_assets(app) / pte.name).run(jvm_x).reshape(-1)
    assert int(np.argmax(logits)) == s["expected_top1"]


@pytest.mark.slow
@needs_java
def test_bundle_tflite_reads_shape_from_litert_without_report(artifacts: dict, app: Path, jvm_core: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    tfl: Path = artifacts["digits_tflite"]
    result = bundle(tfl, app=app, dataset="digits", sample_index=5)
    meta = result.metadata
    interp = Interpreter(model_path=str(tfl))
    assert meta["input"]["shape"] == [int(v) for v in interp.get_input_details()[0]["shape"]] == [1, 1, 8, 8]
    assert meta["runtime"] == "tflite" and meta["recipe"] is None and meta["verification"] is None
    assert any("no verification record" in n for n in result.notes)
    x = app_input_from_png(result.sample_image.read_bytes(), meta["preprocessing"]["mean"], meta["preprocessing"]["std"])
    eager = artifacts["digits_model"](torch.from_numpy(x)).detach().numpy().reshape(-1)
    assert meta["sample"]["expected_top1"] == int(np.argmax(eager))
    assert meta["sample"]["pixels_exact"] is False  # digits are 0..16 levels: the 8-bit PNG rounds them
    got = _contract(jvm_core, "metadata", str(_assets(app)))
    assert got["runtime"] == "tflite" and got["expected_top1"] == meta["sample"]["expected_top1"]
    assert np.array_equal(_jvm_input(got, x.shape).view(np.uint32), x.view(np.uint32))


@pytest.mark.slow
@needs_java
def test_bundle_recommender_scores_a_user(artifacts: dict, app: Path, jvm_core: dict) -> None:
    rec: Path = artifacts["rec_pte"]
    result = bundle(rec, app=app, sample_index=4, top_k=5)
    meta = result.metadata
    assert meta["task"] == "recommendation" and result.sample_image is None
    assert meta["input"]["dtype"] == "int64" and meta["input"]["shape"] == [1]
    assert meta["recommendation"] == {"output": "scores", "top_k": 5, "num_items": 15}
    scores = artifacts["rec_model"](torch.tensor([4])).detach().numpy().reshape(-1)
    assert meta["sample"]["user_id"] == 4
    assert meta["sample"]["expected_items"] == [int(i) for i in np.argsort(-scores, kind="stable")[:5]]
    np.testing.assert_allclose(meta["sample"]["expected_scores"], np.sort(scores)[::-1][:5], rtol=1e-5)
    got = _contract(jvm_core, "metadata", str(_assets(app)))
    assert got["task"] == "recommendation" and got["user_id"] == 4 and got["top_k"] == 5
    assert got["expected_items"] == meta["sample"]["expected_items"] and got["num_items"] == 15


# --------------------------------------------------------------------------- refusals


def test_refuses_unsupported_or_missing_artifacts(tmp_path: Path, app: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(MobilecError, match="not ONNX"):
        bundle(onnx, app=app)
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(MobilecError, match=r"unsupported suffix '\.bin'"):
        bundle(other, app=app)
    with pytest.raises(MobilecError, match="does not exist"):
        bundle(tmp_path / "missing.pte", app=app)
    assert sorted(p.name for p in _assets(app).iterdir()) == [".gitkeep"]


def test_refuses_missing_or_foreign_app_folder(tmp_path: Path) -> None:
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\0" * 16)
    with pytest.raises(MobilecError, match=r"Android app folder .* does not exist"):
        bundle(pte, app=tmp_path / "nope")
    (tmp_path / "not_an_app").mkdir()
    with pytest.raises(MobilecError, match="not the mobilec Android demo project"):
        bundle(pte, app=tmp_path / "not_an_app")


def test_refuses_a_truncated_artifact_and_writes_nothing(artifacts: dict, tmp_path: Path, app: Path) -> None:
    data = Path(artifacts["fm_pte"]).read_bytes()
    cut = tmp_path / "cut.pte"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MobilecError, match=r"truncated|corrupted"):
        bundle(cut, app=app, dataset="digits")
    assert sorted(p.name for p in _assets(app).iterdir()) == [".gitkeep"]


@pytest.mark.slow
def test_never_overwrites_a_different_asset_without_force(artifacts: dict, tmp_path: Path, app: Path) -> None:
    tfl: Path = artifacts["digits_tflite"]
    assets = _assets(app)
    user_file = assets / tfl.name
    user_file.write_bytes(b"someone else's model")
    with pytest.raises(MobilecError, match="already exists with different content"):
        bundle(tfl, app=app, dataset="digits")
    assert user_file.read_bytes() == b"someone else's model"
    assert not (assets / METADATA_NAME).exists()
    result = bundle(tfl, app=app, dataset="digits", force=True)
    assert user_file.read_bytes() == tfl.read_bytes() and result.copied
    again = bundle(tfl, app=app, dataset="digits")  # identical asset: nothing to copy, no force needed
    assert not again.copied and again.metadata == result.metadata
    # a metadata file some other tool wrote is not ours to replace
    (assets / METADATA_NAME).write_text('{"hand": "written"}')
    with pytest.raises(MobilecError, match="not written by mobilec"):
        bundle(tfl, app=app, dataset="digits")
    assert (assets / METADATA_NAME).read_text() == '{"hand": "written"}'


@pytest.mark.slow
def test_needs_a_dataset_of_the_right_shape(artifacts: dict, app: Path) -> None:
    tfl: Path = artifacts["digits_tflite"]  # no report.json beside it
    with pytest.raises(MobilecError, match="no data set"):
        bundle(tfl, app=app)
    with pytest.raises(MobilecError, match=r"images of shape \(1, 28, 28\) but the artifact takes \(1, 8, 8\)"):
        from mobilec.data import load_dataset

        bundle(tfl, app=app, dataset=load_dataset("digits", input_shape=(1, 28, 28)))
    with pytest.raises(MobilecError, match="sample_index 100000 is past"):
        bundle(tfl, app=app, dataset="digits", sample_index=100_000)
    assert not (_assets(app) / METADATA_NAME).exists()
