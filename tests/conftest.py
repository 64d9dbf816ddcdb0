import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

os.environ.setdefault("MOBILEC_RECIPES_DIR", str(REPO / "recipes"))

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist is not installed (./install.sh installs it)"
)
