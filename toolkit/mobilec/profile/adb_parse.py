"""Parsers for what adb devices print: LiteRT benchmark_model, ExecuTorch executor_runner, the conditions snapshot."""

from __future__ import annotations

import re
import time
from typing import Any

from mobilec.profile import energy as en


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Figures from LiteRT ``benchmark_model`` output (times in ms, memory in bytes)."""
    out: dict[str, Any] = {}
    num = r"([-+\d.eE]+)"
    m = re.search(rf"Inference timings in us: Init: {num}, First inference: {num}, Warmup \(avg\): {num}, Inference \(avg\): {num}", text)
    if m:
        init, first, warm, avg = (float(v) / 1000 for v in m.groups())
        out.update(init_ms=init, first_run_ms=first, warmup_avg_ms=warm, inference_avg_ms=avg)
    counts = re.findall(rf"count={num} first={num} curr={num} min={num} max={num} avg={num} std={num}(.*)", text)
    if counts:  # the last such line is the timed run (the first one is the warm-up)
        c = counts[-1]
        out["runs"] = {"count": int(float(c[0])), "min_ms": float(c[3]) / 1000, "max_ms": float(c[4]) / 1000,
                       "avg_ms": float(c[5]) / 1000, "std_ms": float(c[6]) / 1000}
        for key, val in re.findall(rf"(p5|median|p95)={num}", c[7]):
            out["runs"][f"{key}_ms"] = float(val) / 1000
    mem = re.search(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): init={num} overall={num}", text)
    if mem:
        out["memory_overall_bytes"] = int(float(mem.group(2)) * 1024 * 1024)
    mem2 = re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {num}", text)
    if mem2:
        out["memory_overall_bytes"] = int(float(mem2.group(1)) * 1024 * 1024)
    return out


def parse_executor_runner(text: str) -> dict[str, Any]:
    """Figures from ExecuTorch ``executor_runner`` log lines (ms)."""
    out: dict[str, Any] = {}
    iters = re.findall(r"Iteration (\d+) of (\d+): ([\d.]+) ms", text)
    if iters:
        out["iterations_ms"] = [float(ms) for _, _, ms in iters]
    m = re.search(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms", text)
    if m:
        out["executions"], out["total_ms"] = int(m.group(1)), float(m.group(2))
    m = re.search(r"Model loaded in ([\d.]+) ms", text)
    if m:
        out["load_ms"] = float(m.group(1))
    return out


def parse_snapshot(text: str) -> dict[str, Any]:
    """Conditions from the snapshot script: battery, temperatures (°C), CPU frequencies (MHz), screen."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = []
        elif current:
            sections[current].append(line)
    snap: dict[str, Any] = {"time": time.time()}
    battery = en.parse_dumpsys_battery("\n".join(sections.get("battery", [])))
    if battery:
        snap["charging"] = en.is_charging(battery)
        snap["usb_powered"] = battery.get("USB powered")
        snap["battery_level"] = battery.get("level")
        snap["battery_status"] = en.BATTERY_STATUS.get(battery.get("status"), battery.get("status"))
        if isinstance(battery.get("temperature"), int):
            snap["battery_temp_c"] = battery["temperature"] / 10
    temps: dict[str, float] = {}
    for i, line in enumerate(sections.get("thermal", [])):
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1]):
            v = int(parts[1])
            temps[f"{parts[0]}#{i}" if parts[0] in temps else parts[0]] = v / 1000 if abs(v) >= 1000 else float(v)
    if temps:
        snap["temperatures_c"] = temps
        snap["max_temp_c"] = max(temps.values())
    freqs: dict[str, float] = {}
    for line in sections.get("cpufreq", []):
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            freqs[parts[0]] = int(parts[1]) / 1000
    if freqs:
        snap["cpu_freq_mhz"] = freqs
    power = "\n".join(sections.get("power", []))
    if m := re.search(r"mWakefulness=(\w+)", power):
        snap["screen_on"] = m.group(1) == "Awake"
    elif m := re.search(r"Display Power: state=(\w+)", power):
        snap["screen_on"] = m.group(1) == "ON"
    return snap


SNAPSHOT_SCRIPT = (
    "echo @@battery; dumpsys battery; "
    "echo @@thermal; for z in /sys/class/thermal/thermal_zone*; do echo \"$(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null)\"; done; "
    "echo @@cpufreq; for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    "echo \"${c##*/} $(cat $c/cpufreq/scaling_cur_freq 2>/dev/null)\"; done; "
    "echo @@power; dumpsys power | grep -E 'mWakefulness=|Display Power: state='; echo @@end"
)


def first_error(text: str) -> str:
    """The most telling error line of a tool's output (the longest line mentioning an error), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
    if errors:
        return max(errors, key=len)[:200]
    return (lines[-1] if lines else "no output")[:200]


def hygiene_notes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    notes = []
    if before.get("max_temp_c") is not None and after.get("max_temp_c") is not None:
        rise = after["max_temp_c"] - before["max_temp_c"]
        if rise > 5:
            notes.append(f"the hottest thermal zone rose {rise:.1f} °C during the run: later repetitions may be throttled "
                         "(raise cooldown_s)")
    if before.get("screen_on") is False or after.get("screen_on") is False:
        notes.append("the screen was off: the app may have been paused and clocks lowered; keep the screen on")
    fb, fa = before.get("cpu_freq_mhz") or {}, after.get("cpu_freq_mhz") or {}
    dropped = [c for c in fb if c in fa and fb[c] > 0 and fa[c] < 0.7 * fb[c]]
    if dropped:
        notes.append(f"CPU frequency fell by more than 30 % on {', '.join(dropped)} between start and end (throttling or idle)")
    return notes
