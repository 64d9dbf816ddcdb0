"""Bundle an exported artifact into the Android demo app (``android_demo/``).

:func:`bundle` copies a ``.pte`` (ExecuTorch) or ``.tflite`` (LiteRT) file into
``android_demo/app/src/main/assets/`` and writes ``mobilec_metadata.json`` beside it: the model
file, runtime, input shape/dtype (read from the artifact by its runtime), normalization and
labels (from the data set), the recipe (from the run's ``report.json``), and a sample: a real
test image saved as PNG with its true label and the prediction the artifact itself makes for
it in the host runtime (a recommender gets a sample user and its top-K items instead). The app
(``dev.mobilec.core.ModelMetadata``) reads exactly this file.

>>> result = bundle(Path("mobilec-out/mobilenet_v2-int8/model.pte"))   # doctest: +SKIP
>>> result.metadata["sample"]["expected_top1_label"]                   # doctest: +SKIP
'Ankle boot'
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError
from mobilec.io import atomic_path

#: The Gradle project shipped in the repository (absent from an installed wheel: pass ``app=``).
DEFAULT_APP = Path(__file__).resolve().parents[2] / "android_demo"
ASSETS_SUBDIR = Path("app/src/main/assets")
METADATA_NAME = "mobilec_metadata.json"  # dev.mobilec.core.ModelMetadata.ASSET_NAME
SAMPLE_NAME = "mobilec_sample.png"
SCHEMA = "mobilec.android.bundle/1"  # dev.mobilec.core.ModelMetadata.SCHEMA
RUNTIME_BY_SUFFIX = {".pte": "executorch", ".tflite": "tflite"}
PIXEL_SCALE = 255.0
# ExecuTorch ScalarType codes -> numpy dtype names
_ET_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}
_RELOADABLE_DATA = ("fashion-mnist", "digits")


@dataclass(frozen=True)
class BundleResult:
    """What :func:`bundle` wrote.

    >>> r = bundle(Path("run/model.tflite"), force=True)   # doctest: +SKIP
    >>> r.metadata_path.name, r.model_asset.name           # doctest: +SKIP
    ('mobilec_metadata.json', 'model.tflite')
    """

    app: Path
    assets: Path
    model_asset: Path
    metadata_path: Path
    sample_image: Path | None
    metadata: dict[str, Any]
    copied: bool  # False when an identical model asset was already in place
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        m = self.metadata
        lines = [f"bundled {self.model_asset.name} ({m['runtime']}, {m['task']}) into {self.assets}"]
        s = m["sample"]
        if m["task"] == "classification":
            truth = f", true label {s['true_label_name']!r}" if s.get("true_label") is not None else ""
            lines.append(f"sample {self.sample_image.name if self.sample_image else '-'}: host runtime predicts "
                         f"{s['expected_top1_label']!r} (p={s['expected_top5'][0]['probability']:.3f}){truth}")
        else:
            lines.append(f"sample user {s['user_id']}: top items {s['expected_items']}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"next: cd {self.app} && ./gradlew installDebug")
        return "\n".join(lines)


def bundle(
    artifact: Path,
    *,
    app: Path = DEFAULT_APP,
    report: Path | None = None,
    dataset: Any = None,
    force: bool = False,
    sample_index: int = 0,
    top_k: int = 10,
    threads: int = 1,
) -> BundleResult:
    """Copy ``artifact`` into ``app``'s assets with ``mobilec_metadata.json`` and a sample.

    ``report`` defaults to ``report.json`` beside the artifact (recipe, data set name,
    verification); ``dataset`` (an ``ImageDataset`` or a spec such as ``"fashion-mnist"``)
    defaults to the one the report names. ``sample_index`` picks the test image (or, for a
    recommender, the user id). An existing asset of the same name with different content is
    never replaced unless ``force=True``; the metadata and sample files are replaced when a
    previous bundle wrote them.
    """
    artifact = Path(artifact)
    app = Path(app)
    runtime = _check_artifact(artifact)
    assets = _check_app(app)
    if sample_index < 0:
        raise MobilecError(f"sample_index must be >= 0, got {sample_index}")
    if top_k < 1:
        raise MobilecError(f"top_k must be >= 1, got {top_k}")

    model_asset = assets / artifact.name
    artifact_sha = _sha256(artifact)
    model_identical = model_asset.is_file() and _sha256(model_asset) == artifact_sha
    if model_asset.exists() and not model_identical and not force:
        raise MobilecError(
            f"{model_asset} already exists with different content",
            hint="pass force=True (--force) to replace it, or rename the artifact",
        )
    previous = _previous_bundle(assets, force)

    rep = _load_report(artifact, report)
    from mobilec.runtimes import detect_target, open_artifact

    target = detect_target(artifact)  # checks magic bytes and truncation before a native runtime sees it
    if target != runtime:
        raise MobilecError(f"{artifact} holds a {target} model", hint="bundle .pte (ExecuTorch) or .tflite (LiteRT) files")
    session = open_artifact(artifact, threads=threads)
    io_info = _io_info(session, runtime)

    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "generator": _generator(),
        "model_file": artifact.name,
        "model_sha256": artifact_sha,
        "model_bytes": artifact.stat().st_size,
        "runtime": runtime,
        "task": "recommendation" if io_info["input_kind"] == "ids" else "classification",
        "input": {"shape": list(session.input_shape), "dtype": io_info["dtype"], "layout": io_info["layout"]},
        "recipe": (rep or {}).get("recipe"),
        "model_name": ((rep or {}).get("model") or {}).get("name"),
        "dataset": None,
        "verification": _verification(rep, artifact),
    }
    if io_info["input_quant"] is not None:
        meta["input"]["quantization"] = io_info["input_quant"]
    if io_info["output_quant"] is not None:
        meta["output"] = {"quantization": io_info["output_quant"]}

    png: bytes | None = None
    if meta["task"] == "classification":
        ds = _resolve_dataset(dataset, rep, tuple(session.input_shape))
        png, extra = _classification_sample(session, ds, sample_index, runtime)
        meta.update(extra)
    else:
        meta.update(_recommendation_sample(session, runtime, io_info, sample_index, top_k))

    sample_path = assets / SAMPLE_NAME if png is not None else None
    if (sample_path is not None and sample_path.exists() and not force and not previous["owns_sample"]
            and sample_path.read_bytes() != png):
        raise MobilecError(f"{sample_path} exists and was not written by mobilec", hint="pass force=True (--force) to replace it")

    # every refusal happened above: now write, model first and metadata last (the commit point)
    if not model_identical:
        with atomic_path(model_asset) as tmp:
            shutil.copyfile(artifact, tmp)
            _readable(tmp)
    if png is not None:
        with atomic_path(sample_path) as tmp:
            tmp.write_bytes(png)
            _readable(tmp)
    metadata_path = assets / METADATA_NAME
    with atomic_path(metadata_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")  # plain types only: fails loudly otherwise
        _readable(tmp)

    notes = []
    old_model = previous["model_file"]
    if old_model and old_model != artifact.name and (assets / old_model).is_file():
        size = (assets / old_model).stat().st_size
        notes.append(f"assets still hold the previously bundled {old_model} ({size / 1e6:.1f} MB); "
                     "delete it to keep it out of the APK")
    if meta["verification"] is None:
        notes.append("no verification record for this artifact in report.json: run `mobilec export` to verify it "
                     "against the eager model")
    elif meta["verification"].get("status") not in (None, "verified"):
        notes.append(f"report.json marks this artifact {meta['verification']['status']!r}")
    return BundleResult(app=app, assets=assets, model_asset=model_asset, metadata_path=metadata_path,
                        sample_image=sample_path, metadata=meta, copied=not model_identical, notes=notes)


# --------------------------------------------------------------------------- checks


def _check_artifact(artifact: Path) -> str:
    if not artifact.exists():
        raise MobilecError(f"artifact {artifact} does not exist", hint="check the path (e.g. mobilec-out/RUN/model.pte)")
    if not artifact.is_file():
        raise MobilecError(f"artifact {artifact} is not a file", hint="pass a .pte or .tflite file")
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        raise MobilecError(f"{artifact.name}: the Android demo runs ExecuTorch (.pte) and LiteRT (.tflite) models, not ONNX",
                           hint="bundle the run's model.pte or model.tflite (mobilec export --target executorch,tflite)")
    if suffix not in RUNTIME_BY_SUFFIX:
        raise MobilecError(f"{artifact.name} has unsupported suffix {artifact.suffix or '(none)'!r}",
                           hint="bundle a .pte (ExecuTorch) or .tflite (LiteRT) file")
    if artifact.name in (METADATA_NAME, SAMPLE_NAME) or artifact.name.startswith("."):
        raise MobilecError(f"artifact name {artifact.name!r} collides with the bundler's own files", hint="rename it")
    return RUNTIME_BY_SUFFIX[suffix]


def _check_app(app: Path) -> Path:
    if not app.is_dir():
        raise MobilecError(f"Android app folder {app} does not exist",
                           hint="pass app=PATH to the android_demo folder of a mobilec checkout")
    manifest = app / "app/src/main/AndroidManifest.xml"
    if not manifest.is_file() or not (app / "settings.gradle.kts").is_file():
        raise MobilecError(f"{app} is not the mobilec Android demo project (no settings.gradle.kts or {manifest.relative_to(app)})",
                           hint="pass app=PATH to the android_demo folder of a mobilec checkout")
    assets = app / ASSETS_SUBDIR
    assets.mkdir(parents=True, exist_ok=True)
    return assets


def _previous_bundle(assets: Path, force: bool) -> dict[str, Any]:
    """What an earlier bundle left: its metadata may be replaced; a foreign file of that name may not."""
    path = assets / METADATA_NAME
    info: dict[str, Any] = {"model_file": None, "owns_sample": False}
    if not path.exists():
        return info
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        ours = isinstance(old, dict) and old.get("schema", "").startswith("mobilec.android.bundle/")
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        if not force:
            raise MobilecError(f"{path} exists and was not written by mobilec", hint="pass force=True (--force) to replace it")
        return info
    info["model_file"] = old.get("model_file")
    info["owns_sample"] = (old.get("sample") or {}).get("image") == SAMPLE_NAME
    return info


def _load_report(artifact: Path, report: Path | None) -> dict[str, Any] | None:
    path = Path(report) if report is not None else artifact.parent / "report.json"
    if not path.is_file():
        if report is not None:
            raise MobilecError(f"report {path} does not exist", hint="pass the report.json of the run that made the artifact")
        return None
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MobilecError(f"{path} is not readable JSON ({exc})", hint="pass the run's report.json, or report=None") from None
    if not isinstance(rep, dict):
        raise MobilecError(f"{path} is not a mobilec report (top level is {type(rep).__name__})")
    return rep


def _verification(rep: dict[str, Any] | None, artifact: Path) -> dict[str, Any] | None:
    for a in (rep or {}).get("artifacts") or []:
        if isinstance(a, dict) and Path(str(a.get("path", ""))).name == artifact.name:
            v = a.get("verification") or {}
            keep = ("accuracy", "top1_agreement", "max_abs_error", "snr_db", "n_samples")
            return {"status": a.get("status"), **{k: v[k] for k in keep if k in v}}
    return None


def _generator() -> str:
    try:
        from importlib.metadata import version

        return f"mobilec {version('mobilec')}"
    except Exception:  # running from a source tree without an installed distribution
        return "mobilec"


def _readable(path: Path) -> None:
    """Give a temp file (mkstemp: 0600) the permissions a normally created file would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- runtime I/O


def _io_info(session: Any, runtime: str) -> dict[str, Any]:
    """Input dtype/kind and int8 I/O quantization, read from the loaded runtime."""
    in_quant = out_quant = None
    if runtime == "tflite":
        interp = session.interpreter
        d_in, d_out = interp.get_input_details()[0], interp.get_output_details()[0]
        raw = np.dtype(d_in["dtype"]).name
        in_quant, out_quant = _tflite_quant(d_in), _tflite_quant(d_out)
    else:
        raw = getattr(session, "input_dtype", None) or _ET_DTYPES.get(
            int(session._method.metadata.input_tensor_meta(0).dtype()), "unknown")  # no public accessor yet
    if in_quant is not None:  # quantized image input: the app quantizes the normalized floats
        return {"dtype": "float32", "input_kind": "image", "layout": "NCHW", "input_quant": in_quant, "output_quant": out_quant}
    if raw == "float32":
        if len(session.input_shape) != 4:
            raise MobilecError(f"{session.path.name} takes a float input of shape {session.input_shape}",
                               hint="the demo app bundles image classifiers (1×C×H×W) and recommenders (int user ids)")
        return {"dtype": "float32", "input_kind": "image", "layout": "NCHW", "input_quant": None, "output_quant": out_quant}
    if raw in ("int64", "int32"):
        return {"dtype": raw, "input_kind": "ids", "layout": "ids", "input_quant": None, "output_quant": None}
    raise MobilecError(f"{session.path.name} takes a {raw} input", hint="the demo app feeds float32 images or int32/int64 ids")


def _tflite_quant(detail: dict[str, Any]) -> dict[str, Any] | None:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


def _run_all_outputs(session: Any, runtime: str, x: np.ndarray) -> list[np.ndarray]:
    """Every output of one inference with ``x`` fed in its own dtype (RuntimeSession.run is float-only)."""
    if runtime == "tflite":
        interp = session.interpreter
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        return [np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()]
    import torch

    outs = session._method.execute((torch.from_numpy(np.ascontiguousarray(x)),))
    return [o.detach().numpy() for o in outs if isinstance(o, torch.Tensor)]


# --------------------------------------------------------------------------- samples


def _resolve_dataset(dataset: Any, rep: dict[str, Any] | None, input_shape: tuple[int, ...]) -> Any:
    from mobilec.data import ImageDataset, load_dataset

    if len(input_shape) != 4 or input_shape[0] != 1:
        raise MobilecError(f"the artifact's input shape {input_shape} is not 1×C×H×W",
                           hint="export the classifier with batch size 1 (mobilec export does)")
    chw = tuple(int(v) for v in input_shape[1:])
    if dataset is None:
        data = (rep or {}).get("data") or {}
        spec = data.get("spec") or data.get("name")
        if spec is None:
            raise MobilecError("no data set to take the labels, normalization and sample image from",
                               hint="keep the run's report.json beside the artifact, or pass dataset='fashion-mnist'")
        if not data.get("spec") and spec not in _RELOADABLE_DATA:
            raise MobilecError(f"report.json names data set {spec!r}, which cannot be reloaded by name",
                               hint="pass dataset= with the same spec used for export (e.g. imagefolder:PATH)")
        dataset = spec
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, input_shape=chw)
    if not isinstance(dataset, ImageDataset):
        raise MobilecError(f"dataset must be an ImageDataset or a spec string, got {type(dataset).__name__}")
    if tuple(dataset.input_shape) != chw:
        raise MobilecError(f"data set {dataset.name!r} has images of shape {dataset.input_shape} but the artifact takes {chw}",
                           hint="pass the data set the model was exported with")
    return dataset


def _sample_pixels(ds: Any, index: int) -> tuple[np.ndarray, int]:
    """Test image ``index`` back in 8-bit pixels (H×W or H×W×3) and its label."""
    if index >= len(ds.y_test):
        raise MobilecError(f"sample_index {index} is past the {len(ds.y_test)} test images", hint="pick a smaller index")
    x = ds.x_test[index].detach().cpu().numpy().astype(np.float64)  # C×H×W, normalized
    mean = np.asarray(ds.mean, dtype=np.float64).reshape(-1, 1, 1)
    std = np.asarray(ds.std, dtype=np.float64).reshape(-1, 1, 1)
    pixels = np.clip(np.rint((x * std + mean) * PIXEL_SCALE), 0, 255).astype(np.uint8)
    hwc = pixels.transpose(1, 2, 0)
    return (hwc[:, :, 0] if hwc.shape[2] == 1 else hwc), int(ds.y_test[index])


def _encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def app_input_from_png(png: bytes, mean: list[float], std: list[float]) -> np.ndarray:
    """The 1×C×H×W float32 tensor the app builds from the PNG (``dev.mobilec.core.Preprocessing``):
    ``(pixel / 255 - mean) / std`` in float32, gray kept as is, RGB as three planes."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        arr = np.asarray(im.convert("L" if len(mean) == 1 else "RGB"), dtype=np.uint8)
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    x = (chw.astype(np.float32) / np.float32(PIXEL_SCALE) - m) / s
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def _classification_sample(session: Any, ds: Any, index: int, runtime: str) -> tuple[bytes, dict[str, Any]]:
    pixels, label = _sample_pixels(ds, index)
    png = _encode_png(pixels)
    mean = [float(v) for v in ds.mean]
    std = [float(v) for v in ds.std]
    x = app_input_from_png(png, mean, std)  # exactly what the phone will feed
    logits = np.asarray(session.run(x)).reshape(-1)
    if logits.size != ds.num_classes:
        raise MobilecError(f"{session.path.name} outputs {logits.size} values but {ds.name!r} has {ds.num_classes} classes",
                           hint="bundle with the data set the model was trained on")
    if not np.all(np.isfinite(logits)):
        raise MobilecError(f"{session.path.name} produced non-finite outputs for the sample image", hint="re-export the model")
    probs = _softmax(logits)
    order = np.argsort(-probs, kind="stable")[:5]
    classes = list(ds.classes)
    top1 = int(order[0])
    sample = {
        "kind": "image",
        "image": SAMPLE_NAME,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "channels": 1 if pixels.ndim == 2 else 3,
        "split": "test",
        "index": index,
        "true_label": label,
        "true_label_name": classes[label],
        "expected_top1": top1,
        "expected_top1_label": classes[top1],
        "expected_top5": [{"index": int(i), "label": classes[int(i)], "probability": float(probs[i])} for i in order],
        "expected_source": f"this artifact run in the host {runtime} runtime on the PNG's pixels",
        "pixels_exact": bool(np.array_equal(x[0], ds.x_test[index].numpy())),
    }
    extra = {
        "dataset": ds.name,
        "preprocessing": {"pixel_scale": PIXEL_SCALE, "mean": mean, "std": std,
                          "formula": "(pixel / pixel_scale - mean[c]) / std[c], float32, NCHW"},
        "labels": classes,
        "sample": sample,
    }
    return png, extra


def _recommendation_sample(session: Any, runtime: str, io_info: dict[str, Any], user: int, top_k: int) -> dict[str, Any]:
    x = np.full(session.input_shape, user, dtype=np.dtype(io_info["dtype"]))
    outs = _run_all_outputs(session, runtime, x)
    floats = [o for o in outs if o.dtype.kind == "f"]
    ints = [o for o in outs if o.dtype.kind in "iu"]
    if len(outs) == 1 and floats:
        scores = floats[0].reshape(-1)
        if not np.all(np.isfinite(scores)):
            raise MobilecError(f"{session.path.name} produced non-finite scores for user {user}", hint="re-export the model")
        order = np.argsort(-scores, kind="stable")[:top_k]  # = dev.mobilec.core.Postprocessing.topK
        rec = {"output": "scores", "top_k": top_k, "num_items": int(scores.size)}
        items, item_scores = [int(i) for i in order], [float(scores[i]) for i in order]
    elif len(outs) == 2 and len(floats) == 1 and len(ints) == 1:
        ids, sc = ints[0].reshape(-1), floats[0].reshape(-1)
        if ids.size != sc.size:
            raise MobilecError(f"{session.path.name} returns {ids.size} item ids but {sc.size} scores")
        n = min(top_k, ids.size)
        rec = {"output": "topk", "top_k": n, "num_items": None}
        items, item_scores = [int(i) for i in ids[:n]], [float(s) for s in sc[:n]]
    else:
        kinds = [f"{o.dtype.name}{list(o.shape)}" for o in outs]
        raise MobilecError(f"{session.path.name} returns {kinds}",
                           hint="a recommender for the demo returns one float score per item, or (int item ids, float scores)")
    return {
        "labels": [],
        "recommendation": rec,
        "sample": {"kind": "user", "user_id": user, "expected_items": items, "expected_scores": item_scores,
                   "expected_source": f"this artifact run in the host {runtime} runtime"},
    }
