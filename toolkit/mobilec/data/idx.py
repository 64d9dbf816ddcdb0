"""A small reader for the IDX format (MNIST, Fashion-MNIST), plain or gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mobilec.errors import MobilecError

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: 2 zero bytes, a type byte, a rank byte, rank big-endian uint32 dims, then data.

    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
    [7, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MobilecError(f"{source} is not an IDX file (bad magic number)", hint="pass the original *-ubyte(.gz) file")
    type_code, rank = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise MobilecError(f"{source} has unknown IDX type byte 0x{type_code:02x}", hint="pass an uncorrupted IDX file")
    header = 4 + 4 * rank
    if len(data) < header:
        raise MobilecError(f"{source} is truncated inside its IDX header", hint="re-download or reinstall the file")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise MobilecError(
            f"{source} holds {len(data) - header} data bytes but its header {dims} needs {expected}",
            hint="the file is truncated or corrupted; reinstall it",
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file from disk; gzip is detected from the content, not the name."""
    path = Path(path)
    if not path.is_file():
        raise MobilecError(f"IDX file {path} does not exist", hint="check the path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MobilecError(f"{path} is a broken gzip file ({exc})", hint="reinstall or re-download it") from None
    return parse_idx(raw, source=str(path))
