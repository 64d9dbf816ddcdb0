"""Reliability bench (issue 9): run the hardening tests with more fuzz cases and every fault point,
count what each test injected, and write bench/results/reliability.json + reliability.md.

    flock /tmp/mobilec-cpu.lock .venv/bin/python bench/reliability.py [--fuzz-examples 2000]

The counts come from the tests themselves (``tests/hardening_support.record``); pass/fail from
pytest's JUnit XML. Nothing here is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "toolkit"))

from mobilec.io import write_json_atomic, write_text_atomic  # noqa: E402

TESTS = [
    "tests/test_hardening_fuzz.py",
    "tests/test_hardening_inputs.py",
    "tests/test_hardening_export.py",
    "tests/test_hardening_resume.py",
    "tests/test_hardening_disk.py",
    "tests/test_hardening_determinism.py",
]
MACHINE = "AMD EPYC, 2 cores, CPU only, shared"


def run(fuzz_examples: int, tests: list[str], out_dir: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="mobilec-reliability-") as tmp:
        log, junit = Path(tmp) / "counts.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "MOBILEC_RELIABILITY_LOG": str(log), "MOBILEC_FUZZ_EXAMPLES": str(fuzz_examples),
               "MOBILEC_ALL_FAULT_POINTS": "1", "PYTHONPATH": str(REPO / "toolkit")}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", f"--junitxml={junit}",
               *tests]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.time() - t0
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        if log.exists():
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                counts[rec["test"]][rec["kind"]] += rec["n"]
        cases = _junit_cases(junit) if junit.exists() else {}
    tests_out = []
    for test, (outcome, secs, message) in sorted(cases.items()):
        tests_out.append({"test": test, "outcome": outcome, "seconds": round(secs, 2), "counts": dict(counts.get(test, {})),
                          **({"message": message} if message else {})})
    for test in sorted(set(counts) - set(cases)):  # counted but missing from the XML: report, never drop
        tests_out.append({"test": test, "outcome": "unknown", "seconds": None, "counts": dict(counts[test])})
    totals: dict[str, int] = defaultdict(int)
    for t in tests_out:
        for kind, n in t["counts"].items():
            totals[kind] += n
    return {
        "machine": MACHINE,
        "command": ".venv/bin/python bench/reliability.py " + shlex.join(sys.argv[1:]),
        "pytest_command": shlex.join(["python", *cmd[1:]]).replace(str(junit), "JUNIT.xml"),
        "settings": {"MOBILEC_FUZZ_EXAMPLES": fuzz_examples, "MOBILEC_ALL_FAULT_POINTS": 1},
        "pytest_exit_code": proc.returncode,
        "wall_seconds": round(seconds, 1),
        "all_passed": proc.returncode == 0 and all(t["outcome"] in ("passed", "skipped") for t in tests_out) and bool(tests_out),
        "n_tests": len(tests_out),
        "n_passed": sum(t["outcome"] == "passed" for t in tests_out),
        "totals": dict(sorted(totals.items())),
        "tests": tests_out,
        "pytest_tail": proc.stdout.strip().splitlines()[-3:],
    }


def _junit_cases(path: Path) -> dict[str, tuple[str, float, str]]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "")[:300]
                break
        out[nodeid] = (outcome, float(case.get("time", 0.0)), message)
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Reliability: fuzz cases and fault injections (issue 9)",
        "",
        f"Machine: {res['machine']}. Command: `{res['command']}` (pytest: `{res['pytest_command']}`).",
        f"Fuzz examples per hypothesis test: {res['settings']['MOBILEC_FUZZ_EXAMPLES']}; every interrupt / ENOSPC point.",
        "",
        f"**{res['n_passed']} of {res['n_tests']} tests passed; all passed: {res['all_passed']}** "
        f"(pytest exit code {res['pytest_exit_code']}, {res['wall_seconds']} s).",
        "",
        "| kind | total |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in res["totals"].items()],
        "",
        "| test | outcome | s | cases / injections |",
        "|---|---|---:|---|",
    ]
    for t in res["tests"]:
        counts = ", ".join(f"{k}: {v}" for k, v in t["counts"].items()) or "-"
        lines.append(f"| `{t['test'].split('/')[-1]}` | {t['outcome']} | {t['seconds']} | {counts} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuzz-examples", type=int, default=2000)
    ap.add_argument("--tests", nargs="*", default=TESTS)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    res = run(args.fuzz_examples, args.tests, args.out)
    write_json_atomic(args.out / "reliability.json", res)
    write_text_atomic(args.out / "reliability.md", markdown(res))
    print(markdown(res))
    return 0 if res["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
