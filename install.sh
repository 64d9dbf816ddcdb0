#!/usr/bin/env bash
# Installs mobilec and everything it needs on a fresh Debian machine with Python 3.11:
# the Fashion-MNIST data package (apt), a virtual environment in .venv with the pinned
# torch CPU build, executorch, litert-torch, ai-edge-litert, onnxruntime, and mobilec itself.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: the real data set, adb for profiling on phones, a JDK for the demo app's core tests.
missing=""
for pkg in dataset-fashion-mnist adb openjdk-17-jdk-headless; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a range that admits newer releases would fetch GBs of CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# MovieLens-100k for the recommender recipes ships inside the recbole wheel (no redistribution).
.venv/bin/python -m pip install -q --no-deps "recbole==1.2.1"
echo "mobilec installed in $(pwd)/.venv"
