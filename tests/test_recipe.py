"""Recipes: every shipped recipe loads and round-trips; bad recipes give one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilec.errors import MobilecError
from mobilec.recipe import Recipe, available_recipes, recipes_dir

SHIPPED = sorted(p.stem for p in recipes_dir().glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    rec = Recipe.load(name)
    assert rec.description, f"recipe {name} needs a description"
    path = tmp_path / f"{name}.toml"
    path.write_text(rec.dump())
    again = Recipe.load(str(path))
    assert again.to_dict() == rec.to_dict()
    assert again.passes == rec.passes


def test_int8_and_fp32_are_listed() -> None:
    names = available_recipes()
    assert {"fp32", "int8"} <= set(names)


def test_unknown_recipe_lists_available() -> None:
    with pytest.raises(MobilecError, match=r"unknown recipe 'int9'.*available recipes: .*int8"):
        Recipe.load("int9")


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return str(p)


def test_malformed_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version = 1\n[[passes]\ntype = "ptq"\n')
    with pytest.raises(MobilecError, match=r"r\.toml is not valid TOML: .*line 2"):
        Recipe.load(path)


def test_unknown_pass_key_names_key_and_pass(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version = 1\n[[passes]]\ntype = "ptq"\ncalibration_batchez = 3\n')
    with pytest.raises(
        MobilecError, match=r"unknown key 'calibration_batchez' for pass 'ptq'.*valid keys: .*calibration_batches"
    ):
        Recipe.load(path)


def test_ill_typed_pass_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version = 1\n[[passes]]\ntype = "ptq"\ncalibration_batches = "many"\n')
    with pytest.raises(MobilecError, match=r"pass 'ptq' key 'calibration_batches' must be an integer"):
        Recipe.load(path)


def test_unknown_pass_type(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version = 1\n[[passes]]\ntype = "magic"\n')
    with pytest.raises(MobilecError, match=r"unknown pass type 'magic'.*available passes: .*ptq"):
        Recipe.load(path)


def test_invalid_value_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version = 1\n[[passes]]\ntype = "ptq"\nbits = 4\n')
    with pytest.raises(MobilecError, match=r"int8 only"):
        Recipe.load(path)


def test_unknown_section_and_target(tmp_path: Path) -> None:
    with pytest.raises(MobilecError, match=r"unknown top-level key 'exports'"):
        Recipe.load(_write(tmp_path, "version = 1\n[exports]\n"))
    with pytest.raises(MobilecError, match=r"targets must be a non-empty subset"):
        Recipe.load(_write(tmp_path, 'version = 1\n[export]\ntargets = ["coreml"]\n'))


def test_base_merges_passes_and_tables(tmp_path: Path) -> None:
    (tmp_path / "child.toml").write_text('version = 1\nbase = "int8"\n[verify]\nmin_top1_agreement = 0.5\n')
    rec = Recipe.load(str(tmp_path / "child.toml"))
    base = Recipe.load("int8")
    assert rec.passes == base.passes
    assert rec.verify.min_top1_agreement == 0.5
    assert rec.verify.min_snr_db == base.verify.min_snr_db


def test_base_cycle_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.toml").write_text('version = 1\nbase = "b"\n')
    (tmp_path / "b.toml").write_text('version = 1\nbase = "a"\n')
    monkeypatch.setenv("MOBILEC_RECIPES_DIR", str(tmp_path))
    with pytest.raises(MobilecError, match="cycle"):
        Recipe.load("a")


_values = st.one_of(
    st.integers(-5, 100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.text(max_size=4), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    top=st.dictionaries(
        st.sampled_from(["version", "description", "base", "passes", "export", "verify", "profile", "junk"]), _values, max_size=4
    ),
    pass_params=st.dictionaries(
        st.sampled_from(["type", "bits", "calibration_batches", "batch_size", "per_channel", "targets", "x"]), _values, max_size=4
    ),
)
def test_fuzzed_recipes_give_a_recipe_or_one_clear_error(top: dict, pass_params: dict) -> None:
    doc = dict(top)
    doc["passes"] = [pass_params]
    try:
        rec = Recipe.from_dict(doc, name="fuzz", where="fuzz.toml")
    except MobilecError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert Recipe.from_dict(rec.to_dict(), name="fuzz", where="again").to_dict() == rec.to_dict()
