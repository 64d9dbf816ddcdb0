"""CLI: help on every command, listings, and one clear error line for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mobilec.cli import main

COMMANDS = [[], ["export"], ["profile"], ["recipes"], ["passes"], ["models"], ["devices"], ["android"], ["android", "bundle"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "mobilec")
def test_help_on_every_command(cmd: list[str]) -> None:
    result = CliRunner().invoke(main, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_recipes_and_passes_list_descriptions() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["recipes"]).output
    assert "int8" in out and "fp32" in out and "post-training" in out
    out = runner.invoke(main, ["passes"]).output
    assert "ptq" in out


def test_models_lists_the_zoo_with_its_checkpoints() -> None:
    import json

    from mobilec.models import WEIGHTS_DIR, list_models

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[0] for ln in lines] == list_models()
    acc = json.loads((WEIGHTS_DIR / "mobilenet_v2_fashion_mnist.json").read_text())["test_accuracy"]
    v2 = next(ln for ln in lines if ln.startswith("mobilenet_v2 "))
    assert "(default model)" in v2 and f"{acc:.2%} test top-1" in v2
    assert "no shipped checkpoint" in next(ln for ln in lines if ln.startswith("resnet_small "))


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_unknown_recipe_is_one_line() -> None:
    line = _one_error_line(CliRunner().invoke(main, ["export", "--recipe", "int9"]))
    assert "unknown recipe 'int9'" in line and "int8" in line


def test_unknown_target_is_one_line() -> None:
    line = _one_error_line(CliRunner().invoke(main, ["export", "--recipe", "int8", "--target", "coreml"]))
    assert "coreml" in line and "executorch" in line


def test_weights_without_model(tmp_path: Path) -> None:
    w = tmp_path / "w.pt"
    w.write_bytes(b"")
    line = _one_error_line(CliRunner().invoke(main, ["export", "--weights", str(w)]))
    assert "--weights needs --model" in line


def test_profile_missing_artifact(tmp_path: Path) -> None:
    line = _one_error_line(CliRunner().invoke(main, ["profile", str(tmp_path / "nope.pte")]))
    assert "does not exist" in line


def test_python_api_names_stay_callable_after_subpackage_imports() -> None:
    """``import mobilec.export.executorch`` rebinds ``mobilec.export`` to the subpackage; it must stay the API."""
    import importlib

    import mobilec
    from mobilec.errors import MobilecError

    importlib.import_module("mobilec.export.executorch")
    importlib.import_module("mobilec.profile.host")
    assert callable(mobilec.export) and callable(mobilec.profile)
    with pytest.raises(MobilecError, match="no-such-recipe"):
        mobilec.export("no-such-recipe")


def test_an_error_naming_input_with_control_characters_stays_one_line() -> None:
    from mobilec.errors import one_line

    assert one_line("device 0\r0 is not attached\n") == "device 0\\r0 is not attached\\n"
    assert one_line("3×3 conv") == "3×3 conv"  # only control characters are escaped
