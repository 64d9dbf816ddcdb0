"""INT4 packing of .tflite FULLY_CONNECTED weights: the byte layout LiteRT reads, and the range check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobilec.export.tflite_int4 import pack_int4, unpack_int4


@given(st.lists(st.integers(-8, 7), max_size=257))
def test_pack_round_trips(codes: list[int]) -> None:
    packed = pack_int4(np.array(codes, dtype=np.int8))
    assert packed.dtype == np.uint8 and len(packed) == -(-len(codes) // 2)
    assert unpack_int4(packed, len(codes)).tolist() == codes


def test_low_nibble_holds_the_first_code() -> None:
    assert pack_int4(np.array([1, -1, -8], dtype=np.int8)).tolist() == [0xF1, 0x08]


def test_codes_outside_int4_are_refused() -> None:
    with pytest.raises(ValueError, match=r"outside the int4 range \[-8, 7\]: -9\.\.3"):
        pack_int4(np.array([3, -9], dtype=np.int8))
