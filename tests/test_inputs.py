"""Config and input checks: duplicate YAML keys, implausible values, one number syntax."""

import logging
import subprocess
import sys

import numpy as np
import pytest

import timesim
from timesim import ConfigError, TraceError
from timesim.cli import main
from timesim.trace import LayerInfo, TraceWriter


def test_duplicate_hwconfig_key_is_refused_naming_file_key_and_both_lines(tmp_path, capsys):
    p = tmp_path / "chip.yaml"
    p.write_text("version: 1\nxbar:\n  rows: 128\n  cols: 64\n  rows: 64\n")
    with pytest.raises(ConfigError) as err:
        timesim.load_hwconfig(p)
    msg = str(err.value)
    assert str(p) in msg and "xbar.rows" in msg and "lines 3 and 5" in msg
    assert main(["run", "--hw", str(p), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "xbar.rows" in lines[0] and "lines 3 and 5" in lines[0]


def test_one_key_spelled_two_ways_is_refused(tmp_path):
    p = tmp_path / "chip.yaml"
    p.write_text("version: 1\nxbar:\n  read_latency: 10 ns\n  read_latency_ns: 20\n")
    with pytest.raises(ConfigError, match="xbar.read_latency_ns: the same key as "
                                          "xbar.read_latency"):
        timesim.load_hwconfig(p)


def test_yaml_merge_keys_still_override():
    from timesim import yamlio

    doc = yamlio.load("a: &a {rows: 1, cols: 2}\nb:\n  <<: *a\n  rows: 3\n")
    assert doc["b"] == {"rows": 3, "cols": 2}


def test_duplicate_manifest_key_is_refused(tmp_path):
    path = tmp_path / "t"
    with TraceWriter(path, [LayerInfo("fc", "linear", 4, 3)], model="m", source="test",
                     chunk_iterations=2) as w:
        w.append_chunk({"fc": np.zeros((2, 4, 3), dtype=np.float32)})
    text = (path / "manifest.yaml").read_text()
    line = 1 + text.splitlines().index(next(l for l in text.splitlines()
                                            if l.startswith("model:")))
    (path / "manifest.yaml").write_text(text + "model: other\n")
    with pytest.raises(TraceError) as err:
        timesim.open_trace(path)
    assert "duplicate key model" in str(err.value)
    assert f"lines {line} and {len(text.splitlines()) + 1}" in str(err.value)


def test_implausible_value_warns_once_with_key_value_and_range(caplog, monkeypatch):
    from timesim import plausible

    monkeypatch.setattr(plausible, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="timesim"):
        hw = timesim.load_hwconfig(None, ["xbar.read_latency=10 ms"])
        timesim.load_hwconfig(None, ["xbar.read_latency=10 ms"])     # a sweep's next point
    assert hw.xbar.read_latency_s == 10e-3           # warned, not refused
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1
    assert "xbar.read_latency = 10 ms" in msgs[0] and "1 ns to 1 us" in msgs[0]
    assert msgs[0].startswith("--set xbar.read_latency=10 ms")


@pytest.mark.parametrize("name", timesim.config.presets())
def test_bundled_chips_are_plausible(name, caplog):
    with caplog.at_level(logging.WARNING, logger="timesim"):
        timesim.load_hwconfig(name)
    assert not caplog.records


def test_cli_prints_the_warning(tmp_path):
    r = subprocess.run([sys.executable, "-m", "timesim", "run", "--set",
                        "clock.frequency=100 THz", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown frequency unit" in r.stderr      # a unit typo: error
    r = subprocess.run([sys.executable, "-m", "timesim", "run", "--set",
                        "write.voltage=40 V", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 0
    warned = [l for l in r.stderr.splitlines() if "write.voltage = 40 V" in l]
    assert len(warned) == 1 and "300 mV to 6 V" in warned[0]


@pytest.mark.parametrize("text,value", [
    ("10000", 10000), ("1e4", 10000), ("1E4", 10000), ("64_000", 64000), ("2.5e3", 2500),
    ("1.0", 1), (" 7 ", 7), ("12345678901234567891e0", 12345678901234567891),
])
def test_integer_syntax(text, value):
    from timesim.units import parse_integer

    assert parse_integer(text) == value


@pytest.mark.parametrize("text", ["1.5e0", "0x10", "1__0", "inf", "nan", "", "1e999", "ten"])
def test_integer_syntax_rejects(text):
    from timesim.units import parse_integer

    with pytest.raises(ValueError):
        parse_integer(text)


def test_synth_and_yaml_and_cli_take_the_same_numbers(tmp_path):
    t = timesim.open_trace("synth:mlp-small?iterations=1e4&seed=64_000")
    assert (t.meta.iterations, t.seed) == (10000, 64000)
    p = tmp_path / "chip.yaml"
    p.write_text("version: 1\ncontroller:\n  interval: 1e4\n  rows: 64_000\n")
    hw = timesim.load_hwconfig(p, ["controller.rct=2.5e1"])
    assert (hw.controller.interval, hw.controller.rows, hw.controller.rct) == (10000, 64000, 25)
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "2e0",
                 "--chunk", "1e0", "--out", str(tmp_path / "t")]) == 0
    assert timesim.open_trace(tmp_path / "t").meta.iterations == 2


def test_non_integral_count_names_the_parameter(tmp_path, capsys):
    with pytest.raises(TraceError, match=r"iterations: expected an integer, got '1.5e0'"):
        timesim.open_trace("synth:mlp-small?iterations=1.5e0")
    with pytest.raises(ConfigError, match=r"controller.interval: must be an integer"):
        timesim.load_hwconfig(None, ["controller.interval=1.5e0"])
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--checkpoint-every", "1.5e0", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "--checkpoint-every" in capsys.readouterr().err


def test_fast_loader_of_fitted_models_refuses_duplicates_too():
    from timesim import yamlio

    with pytest.raises(yamlio.DuplicateKeyError, match=r"layers\[0\].bias \(lines 3 and 4"):
        yamlio.load("format: x\nlayers:\n- bias: 1\n  bias: 2\n", fast=True)


def test_manifest_numbers_take_the_same_syntax(tmp_path):
    path = tmp_path / "t"
    with TraceWriter(path, [LayerInfo("fc", "linear", 4, 3)], model="m", source="test",
                     chunk_iterations=2) as w:
        w.append_chunk({"fc": np.zeros((2, 4, 3), dtype=np.float32)})
    text = (path / "manifest.yaml").read_text()
    (path / "manifest.yaml").write_text(text.replace("chunk_iterations: 2",
                                                     "chunk_iterations: 2e0"))
    assert timesim.open_trace(path).meta.chunk_iterations == 2
    (path / "manifest.yaml").write_text(text.replace("chunk_iterations: 2",
                                                     "chunk_iterations: 2.5e0"))
    with pytest.raises(TraceError, match="chunk_iterations: must be an integer"):
        timesim.open_trace(path)
