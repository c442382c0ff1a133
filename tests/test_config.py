"""Hardware config: units, overlays, overrides, errors that name the key, documentation."""

import re
from pathlib import Path

import pytest
import yaml

import timesim
from timesim.config import bundled_hwconfig, describe_keys
from timesim.errors import ConfigError
from timesim.units import parse_quantity

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="chip.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_chip_values_and_units():
    hw = timesim.load_hwconfig()
    assert (hw.xbar.rows, hw.xbar.cols) == (128, 128)
    assert hw.clock.frequency_hz == 1e9
    assert hw.write.pulse_latency_s == pytest.approx(50e-9)
    assert hw.write.pulse_energy_j == pytest.approx(8e-12)
    assert hw.xbar.r_off_ohm == pytest.approx(1e6)
    assert hw.adc.energy_j == pytest.approx(1.26e-12)
    c = hw.controller
    assert (c.selection, c.rct, c.wear_leveling) == ("sgs", 128, "ars")
    assert (c.interval, c.rows) == (1024, 32)


@pytest.mark.parametrize("text,kind,si", [
    ("50 ns", "time", 50e-9), ("1.5us", "time", 1.5e-6), ("8 pJ", "energy", 8e-12),
    ("1 GHz", "frequency", 1e9), ("100 kohm", "resistance", 1e5), ("1 MOhm", "resistance", 1e6),
    ("2 MΩ", "resistance", 2e6), ("0.5 V", "voltage", 0.5), ("1.26 mW", "power", 1.26e-3),
    ("3e-3 s", "time", 3e-3), ("25 fJ", "energy", 25e-15)])
def test_parse_quantity(text, kind, si):
    assert parse_quantity(text, kind) == pytest.approx(si)


@pytest.mark.parametrize("text", ["50 parsecs", "fast", "1 GHz GHz", "nan ns", "inf ns"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text, "time")


def test_unit_string_and_suffixed_key_are_the_same(tmp_path):
    a = timesim.load_hwconfig(write(tmp_path, "version: 1\nwrite: {pulse_latency: 20 ns}\n"))
    b = timesim.load_hwconfig(
        write(tmp_path, "version: 1\nwrite: {pulse_latency_ns: 20}\n", "b.yaml"))
    c = timesim.load_hwconfig(None, ["write.pulse_latency_us=0.02"])
    assert a.write.pulse_latency_s == b.write.pulse_latency_s == pytest.approx(20e-9)
    assert c.write.pulse_latency_s == pytest.approx(20e-9)


def test_overlay_keeps_defaults_and_overrides_apply_last(tmp_path):
    p = write(tmp_path, "version: 1\nname: mine\nxbar: {rows: 64}\ncontroller: {interval: 100}\n")
    hw = timesim.load_hwconfig(p, ["controller.interval=7", "controller.selection=topk"])
    assert hw.name == "mine" and hw.xbar.rows == 64 and hw.xbar.cols == 128
    assert hw.controller.interval == 7 and hw.controller.selection == "topk"


def test_resolved_config_round_trips(tmp_path):
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["endurance.sigma=0.3"])
    p = write(tmp_path, yaml.safe_dump(hw.to_dict()))
    again = timesim.load_hwconfig(p)
    assert again.to_dict() == hw.to_dict()


@pytest.mark.parametrize("name", ["time-default", "tiny", "mnsim-256"])
def test_bundled_configs_load(name):
    hw = timesim.load_hwconfig(bundled_hwconfig(name))
    assert hw.name == name
    assert (ROOT / "hwconfigs" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("override,needle", [
    ("xbar.rows=-4", "xbar.rows: must be positive, got -4"),
    ("xbar.rows=0", "xbar.rows: must be positive"),
    ("xbar.rows=1.5", "xbar.rows: must be an integer"),
    ("xbar.rows=true", "xbar.rows: must be an integer"),
    ("xbar.bogus=1", "xbar.bogus: unknown key"),
    ("nosuch.key=1", "nosuch: unknown section"),
    ("controller.selection=magic", "controller.selection: must be one of"),
    ("controller.wear_leveling=sometimes", "controller.wear_leveling: must be one of"),
    ("controller.topk_density=0", "controller.topk_density: must be in (0, 1]"),
    ("controller.topk_density=1.5", "controller.topk_density: must be in (0, 1]"),
    ("write.pulse_latency=50", "write.pulse_latency: give a unit"),
    ("write.pulse_latency=50 furlongs", "write.pulse_latency: unknown time unit"),
    ("write.pulse_latency_ns=fast", "write.pulse_latency_ns: expected a number"),
    ("write.pulse_latency_ns=-1", "write.pulse_latency_ns: must be positive"),
    ("endurance.cycles=0", "endurance.cycles: must be at least 1"),
    ("endurance.cycles=1e-3", "endurance.cycles: must be at least 1"),
    ("xbar.rows", "expected section.key=value"),
    ("xbar.rows=", "missing value"),
    ("a.b.c=1", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        timesim.load_hwconfig(None, [override])
    msg = str(err.value)
    assert needle in msg and msg.startswith(f"--set {override}")
    assert "\n" not in msg


@pytest.mark.parametrize("text,needle", [
    ("- 1\n- 2\n", "must be a YAML mapping"),
    ("just a string\n", "must be a YAML mapping"),
    ("xbar: {rows: 8}\n", "version: missing"),
    ("version: 2\n", "version: only version 1"),
    ("version: 1\nxbar: [1, 2]\n", "xbar: must be a mapping"),
    ("version: 1\nxbar: {rows: 8, colz: 8}\n", "xbar.colz: unknown key"),
    ("version: 1\ngpu: {cores: 8}\n", "gpu: unknown section"),
    ("version: 1\nxbar: {rows: 8\n", "invalid YAML"),
    ("version: 1\nxbar: {rows: 2001-13-45}\n", "invalid YAML"),
    ("version: 1\na: &a [*a]\nb: *a\n", "a: unknown section"),
    ("version: 1\nxbar: {r_on: 1 MOhm, r_off: 100 kohm}\n", "xbar.r_off: must exceed xbar.r_on"),
    ("version: 1\nadc: {cols_per_adc: 256}\n", "adc.cols_per_adc: must not exceed xbar.cols"),
])
def test_bad_files_name_file_and_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        timesim.load_hwconfig(p)
    assert needle in str(err.value) and str(p) in str(err.value)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such hwconfig"):
        timesim.load_hwconfig(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        timesim.load_hwconfig(tmp_path)


def test_every_key_is_documented():
    doc = (ROOT / "docs" / "hwconfig.md").read_text()
    for key, *_ in describe_keys():
        assert f"`{key}`" in doc, key


def test_every_default_number_cites_a_source():
    for path in (ROOT / "hwconfigs").glob("*.yaml"):
        for line in path.read_text().splitlines():
            body = line.split("#")[0]
            if re.search(r":\s*[-\d.]", body) and not body.strip().startswith("version"):
                assert "#" in line and len(line.split("#", 1)[1].strip()) > 5, (path, line)
