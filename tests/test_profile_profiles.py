"""Device profiles: every shipped profile loads; bad files fail naming the key and the file."""

from pathlib import Path

import pytest

from mobilec.errors import MobilecError
from mobilec.profile import list_profiles, load_profile
from mobilec.profile.profiles import profile_for, profiles_dir

SHIPPED = sorted(p.stem for p in profiles_dir().glob("*.toml"))


def test_the_required_profiles_ship():
    for name in ("host", "android-generic", "pixel-8", "galaxy-s23", "redmi-note-12", "emulator-arm64", "emulator-x86_64"):
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_loads(name):
    p = load_profile(name)
    assert p.name == name and p.kind in ("host", "adb", "emulator") and p.description
    assert p.runs >= 1 and p.repetitions >= 1 and p.warmup >= 0
    if p.kind == "emulator":
        assert p.energy_method == "none"
    if p.kind == "host":
        assert p.energy_method == "estimate"
    assert name in list_profiles()


def test_phone_profiles_pin_big_cores():
    assert load_profile("pixel-8").big_cores == (4, 5, 6, 7, 8)
    assert load_profile("pixel-8").cpu_mask == "1f0"
    assert load_profile("galaxy-s23").current_unit == "mA"
    assert load_profile("android-generic").cpu_mask is None


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "mine.toml"
    p.write_text('kind = "adb"\ndescription = "test"\n' + body)
    return p


def test_unknown_key_names_key_and_file(tmp_path):
    p = _write(tmp_path, "big_cors = [4, 5]\n")
    with pytest.raises(MobilecError, match=r"mine\.toml.*unknown key 'big_cors'"):
        load_profile(p)


@pytest.mark.parametrize(("line", "key"), [
    ("runs = \"fifty\"", "runs"),
    ("runs = 0", "runs"),
    ("threads = true", "threads"),
    ("big_cores = [4, \"x\"]", "big_cores"),
    ("energy_method = \"oscilloscope\"", "energy_method"),
    ("current_unit = \"A\"", "current_unit"),
    ("cooldown_s = -1", "cooldown_s"),
])
def test_ill_typed_values_name_the_key(tmp_path, line, key):
    with pytest.raises(MobilecError, match=rf"mine\.toml: key '{key}' has invalid value"):
        load_profile(_write(tmp_path, line + "\n"))


def test_missing_and_broken(tmp_path):
    (tmp_path / "nokind.toml").write_text('description = "x"\n')
    with pytest.raises(MobilecError, match="missing key 'kind'"):
        load_profile(tmp_path / "nokind.toml")
    (tmp_path / "bad.toml").write_text("kind = \n")
    with pytest.raises(MobilecError, match="not valid TOML"):
        load_profile(tmp_path / "bad.toml")
    with pytest.raises(MobilecError, match=r"unknown device profile 'pixel-99'.*available:.*pixel-8"):
        load_profile("pixel-99")
    (tmp_path / "emu.toml").write_text('kind = "emulator"\ndescription = "x"\nenergy_method = "battery_sysfs"\n')
    with pytest.raises(MobilecError, match="emulators have no battery"):
        load_profile(tmp_path / "emu.toml")


def test_profile_for_matches_models():
    assert profile_for("Pixel 8", emulator=False, abi="arm64-v8a").name == "pixel-8"
    assert profile_for("SM-S911B", emulator=False, abi="arm64-v8a").name == "galaxy-s23"
    assert profile_for("Some Phone", emulator=False, abi="arm64-v8a").name == "android-generic"
    assert profile_for("sdk_gphone64_x86_64", emulator=True, abi="x86_64").name == "emulator-x86_64"
    assert profile_for("sdk_gphone64_arm64", emulator=True, abi="arm64-v8a").name == "emulator-arm64"
