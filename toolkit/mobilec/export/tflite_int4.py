"""Store a .tflite's FULLY_CONNECTED weights as INT4 where their int8 codes fit in ``[-8, 7]``.

litert-torch's static int8 mode writes every weight as INT8, also the codes of a 4-bit (or
lower) DuQ layer. LiteRT's FULLY_CONNECTED kernel takes INT4 filters with int8 inputs (two codes
a byte, low nibble first), so such a weight is rewritten to INT4: the same integers, half the
bytes, and outputs equal to the INT8 model's (tests/test_quant_export.py). Convolutions keep INT8,
measured with ai-edge-litert and its XNNPACK delegate on the DuQ test model: INT4 CONV_2D filters
run, but a 1x1 conv over a spatial map then differs from the INT8 model by one output unit (it is
not the same integer pipeline), and INT4 DEPTHWISE_CONV_2D filters differ by up to 3 units (they
fall back to the reference kernels); the artifact must compute what the eager model computes.

>>> pack_int4_weights(Path("model.tflite"), Path("model4.tflite"))   # doctest: +SKIP
{'FULLY_CONNECTED': 1}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INT4_MIN, INT4_MAX = -8, 7


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in ``[-8, 7]`` -> TFLite's packed INT4 bytes (element ``2i`` in the low nibble of byte ``i``)."""
    flat = np.asarray(codes, dtype=np.int8).ravel()
    if flat.size and (flat.min() < INT4_MIN or flat.max() > INT4_MAX):
        raise ValueError(f"codes outside the int4 range [{INT4_MIN}, {INT4_MAX}]: {int(flat.min())}..{int(flat.max())}")
    nibbles = (flat.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: the first ``count`` sign-extended int8 codes."""
    b = np.asarray(packed, dtype=np.uint8)
    lo = ((b & 0xF).astype(np.int8) << 4) >> 4
    hi = (b.astype(np.int8) >> 4).astype(np.int8)
    return np.stack([lo, hi], axis=1).ravel()[:count].astype(np.int8)


#: ops whose INT4 filter (input 1) LiteRT executes with the same integers as the INT8 filter
PACKABLE_OPS = ("FULLY_CONNECTED",)


def pack_int4_weights(src: Path, dst: Path, ops: tuple[str, ...] = PACKABLE_OPS) -> dict[str, int]:
    """Write ``src`` to ``dst`` with every INT8 filter of ``ops`` whose codes fit int4 stored as INT4.

    Returns how many filters were packed per op (``dst`` is written either way).
    """
    from ai_edge_litert import schema_py_generated as schema

    from mobilec.export.tflite_names import pack_tflite

    wanted = {getattr(schema.BuiltinOperator, name): name for name in ops}
    buf = Path(src).read_bytes()
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    packed = dict.fromkeys(ops, 0)
    done: set[int] = set()  # a buffer shared by two ops is packed once
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            oc = model.operatorCodes[op.opcodeIndex]
            name = wanted.get(max(oc.builtinCode, oc.deprecatedBuiltinCode))
            if name is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = sg.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.INT8 or data is None or len(data) == 0 or tensor.buffer in done:
                continue
            codes = np.asarray(data, dtype=np.uint8).view(np.int8)
            if codes.min() < INT4_MIN or codes.max() > INT4_MAX:
                continue
            model.buffers[tensor.buffer].data = pack_int4(codes)
            tensor.type = schema.TensorType.INT4
            done.add(tensor.buffer)
            packed[name] += 1
    Path(dst).write_bytes(pack_tflite(model, len(buf)))
    return {k: v for k, v in packed.items() if v}


def int4_tensors(path: Path) -> set[int]:
    """Indices of the INT4 tensors of the model's main subgraph (the interpreter reports them unpacked, as int8)."""
    from ai_edge_litert import schema_py_generated as schema

    sg = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0).Subgraphs(0)
    return {i for i in range(sg.TensorsLength()) if sg.Tensors(i).Type() == schema.TensorType.INT4}
