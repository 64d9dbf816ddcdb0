"""Energy: the Horowitz estimate checked by hand, always labelled estimated; measurement arithmetic; parsers."""

import pytest
import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.profile import energy as en
from mobilec.profile.adb_parse import parse_benchmark_model, parse_executor_runner


def test_estimate_by_hand_int8():
    # 1000 MACs int8: 1000 x (0.2 mult + 0.1 32-bit accumulate) = 300 pJ
    # SRAM: 1000 x (8+8)/8 = 2000 B = 500 words x 5 pJ = 2500 pJ
    # DRAM: 100 weights x 1 B + 250 activations x 1 B = 350 B = 87.5 words x 640 pJ = 56000 pJ
    layer = en.LayerWork("fc", macs=1000, weight_bits=8, activation_bits=8, weight_params=100, activation_elems=250, floating=False)
    e = en.estimate_energy([layer])
    assert e.kind == "estimated"
    assert e.method == "estimated: Horowitz ISSCC 2014 45nm analytical model"
    assert e.breakdown_mj == pytest.approx({"compute": 300e-9, "sram": 2500e-9, "dram": 56000e-9})
    assert e.mj_per_inference == pytest.approx(58800e-9)
    assert e.lower_bound_mj == pytest.approx(56300e-9)
    assert e.uncertainty_mj is None
    assert any("Horowitz" in a for a in e.assumptions)


def test_estimate_by_hand_fp32_and_fp16():
    # fp32: 10 MACs x (3.7 + 0.9) = 46 pJ; SRAM 10 x 8 B = 20 words x 5 = 100 pJ; DRAM (4 + 6) x 4 B = 10 words x 640 = 6400 pJ
    e = en.estimate_energy([en.LayerWork("conv", macs=10, weight_params=4, activation_elems=6)])
    assert e.mj_per_inference == pytest.approx(6546e-9)
    assert en.mac_energy_pj(16, 16, floating=True) == (pytest.approx(1.5), "fp16")
    assert en.mac_energy_pj(4, 8, floating=False) == (pytest.approx(0.3), "int8")  # a 4-bit grid executes as int8
    assert en.mac_energy_pj(16, 8, floating=False) == (pytest.approx(3.2), "int32")


def test_int8_is_cheaper_than_fp32_for_the_same_layers():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x = torch.randn(1, 1, 8, 8)
    fp32 = en.estimate_energy(en.layer_work_from_model(model, x))
    int8 = en.estimate_energy(en.layer_work_from_model(model, x, weight_bits=8, activation_bits=8))
    assert int8.mj_per_inference < fp32.mj_per_inference / 3
    works = en.layer_work_from_model(model, x)
    assert [w.macs for w in works] == [8 * 64 * 9, 10 * 512]  # conv: out elems x Cin x 3 x 3; linear: out x in


def test_estimate_rejects_nothing_and_nonsense():
    with pytest.raises(MobilecError, match="no layers"):
        en.estimate_energy([])
    with pytest.raises(MobilecError, match="negative MACs"):
        en.estimate_energy([en.LayerWork("x", macs=-1)])


def test_power_samples_arithmetic():
    # ΔP = mean(1000, 1200) - mean(400, 600) = 600 mW; over 2 s for 100 inferences: 600 x 2 / 100 = 12 mJ
    m = en.energy_from_power_samples([1000, 1200], [400, 600], duration_s=2.0, inferences=100, method="measured: test")
    assert m.kind == "measured" and m.mj_per_inference == pytest.approx(12.0)
    # se = sqrt(20000/2 + 20000/2) = 141.42 mW -> 141.42 x 2 / 100
    assert m.uncertainty_mj == pytest.approx(2 ** 0.5 * 100 * 2 / 100)
    assert m.details["delta_power_mw"] == pytest.approx(600) and not m.flags
    weak = en.energy_from_power_samples([500, 520], [505, 515], duration_s=1.0, inferences=10, method="measured: test")
    assert any("not distinguishable from idle" in f for f in weak.flags)
    with pytest.raises(MobilecError, match="too few power samples"):
        en.energy_from_power_samples([1.0], [1.0, 2.0], duration_s=1, inferences=1, method="m")


def test_rail_deltas_arithmetic():
    w = {"run_mj": 100.0, "run_s": 1.0, "idle_mj": 20.0, "idle_s": 1.0, "timed_s": 0.5, "inferences": 10}
    one = en.energy_from_rail_deltas([w], method="measured: rails")
    assert one.mj_per_inference == pytest.approx(80 * 0.5 / 10) and one.uncertainty_mj is None
    assert any("one repetition" in f for f in one.flags)
    two = en.energy_from_rail_deltas([w, {**w, "run_mj": 120.0}], method="measured: rails")
    assert two.mj_per_inference == pytest.approx((4.0 + 5.0) / 2)
    assert two.uncertainty_mj == pytest.approx(0.5)  # std([4, 5], ddof=1) / sqrt(2)


def test_units():
    assert en.current_to_amps(-450000, "uA") == pytest.approx(0.45)
    assert en.current_to_amps(450, "mA") == pytest.approx(0.45)
    assert en.voltage_to_volts(3_950_000, 3.85) == pytest.approx(3.95)
    assert en.voltage_to_volts(3950, 3.85) == pytest.approx(3.95)
    assert en.voltage_to_volts(None, 3.85) == 3.85
    with pytest.raises(MobilecError):
        en.current_to_amps(1, "A")


POWER_STATS = """
============= PowerStats HAL 2.0 state residencies ==============
========== End of PowerStats HAL 2.0 state residencies ==========

============= PowerStats HAL 2.0 energy meter ==============
                           Channel    Cumulative Energy
       [S4M_VDD_CPUCL0]:CPU(LITTLE)         12345.67 mWs
          [S2M_VDD_CPUCL2]:CPU(BIG)          2000.50 mWs
========== End of PowerStats HAL 2.0 energy meter ==========
"""

BATTERY = """Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Max charging current: 500000
  status: 2
  level: 87
  temperature: 295
  technology: Li-ion
"""


def test_parsers():
    assert en.parse_power_stats(POWER_STATS) == {"[S4M_VDD_CPUCL0]:CPU(LITTLE)": 12345.67, "[S2M_VDD_CPUCL2]:CPU(BIG)": 2000.5}
    assert en.parse_power_stats("Can't find service") == {}
    b = en.parse_dumpsys_battery(BATTERY)
    assert b["USB powered"] is True and b["level"] == 87 and b["status"] == 2 and en.is_charging(b)
    assert not en.is_charging({"AC powered": False, "USB powered": False, "status": 3})


def test_runner_output_parsers():
    bm = parse_benchmark_model(
        "count=50 first=249042 curr=250889 min=247067 max=254474 avg=249684 std=1442\n"
        "Inference timings in us: Init: 16242, First inference: 360262, Warmup (avg): 304586, Inference (avg): 249684\n"
        "Peak memory footprint (MB): init=4.92969 overall=138.809\n"
    )
    assert bm["init_ms"] == pytest.approx(16.242) and bm["inference_avg_ms"] == pytest.approx(249.684)
    assert bm["first_run_ms"] == pytest.approx(360.262) and bm["runs"]["count"] == 50 and bm["runs"]["std_ms"] == pytest.approx(1.442)
    assert bm["memory_overall_bytes"] == int(138.809 * 1024 * 1024)
    sci = parse_benchmark_model("Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06, "
                                "Inference (avg): 2.95034e+06\n")
    assert sci["inference_avg_ms"] == pytest.approx(2950.34)
    er = parse_executor_runner(
        "I 00:00:00.02 executorch:executor_runner.cpp:300] Model loaded in 18.75 ms.\n"
        "I 00:00:00.03 executorch:executor_runner.cpp:400] Iteration 1 of 2: 5.5 ms\n"
        "I 00:00:00.03 executorch:executor_runner.cpp:400] Iteration 2 of 2: 4.5 ms\n"
        "I 00:00:00.04 executorch:executor_runner.cpp:410] Model executed successfully 2 time(s) in 10.0 ms.\n"
    )
    assert er == {"iterations_ms": [5.5, 4.5], "executions": 2, "total_ms": 10.0, "load_ms": 18.75}
