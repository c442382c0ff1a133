"""Hostile inputs: every malformed hwconfig, override, manifest or chunk is a TimesimError
(exit code 2 in the CLI), never another exception and never a report that looks valid."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timesim
from timesim.errors import ConfigError, TimesimError
from timesim.trace import LayerInfo, TraceDir, TraceWriter

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["50 ns", "8 pJ", "1 GHz", "-3 V", "1e999 s", "sgs", "ars",
                                     "12 parsecs", "0x10", "1_000", ".inf", "NaN"]))
keys = st.one_of(st.sampled_from(["version", "name", "xbar", "write", "controller", "rows",
                                  "cols", "pulse_latency", "pulse_latency_ns", "selection",
                                  "interval", "cycles", "endurance", "chip", "crossbars",
                                  "multiplex"]), st.text(max_size=8), st.integers(-5, 5))
docs = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@FUZZ
@given(doc=docs)
def test_random_hwconfig_documents(tmp_path, doc):
    p = tmp_path / "hw.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        timesim.load_hwconfig(p)
    except ConfigError:
        pass


@FUZZ
@given(text=st.text(max_size=200))
def test_random_hwconfig_text(tmp_path, text):
    p = tmp_path / "hw.yaml"
    p.write_text(text)
    try:
        timesim.load_hwconfig(p)
    except ConfigError:
        pass


@FUZZ
@given(section=st.sampled_from(["xbar", "write", "controller", "endurance", "chip", "adc",
                                "bogus", ""]),
       key=keys.map(str), value=st.text(max_size=15))
def test_random_overrides(section, key, value):
    try:
        timesim.load_hwconfig(None, [f"{section}.{key}={value}"])
    except ConfigError:
        pass


LAYERS = [LayerInfo(name="conv", kind="conv2d", rows=8, cols=3, kernel=(2, 2), in_channels=2,
                    out_channels=3, input_hw=(4, 4), output_hw=(3, 3), stride=(1, 1),
                    padding=(0, 0)),
          LayerInfo(name="fc", kind="linear", rows=5, cols=2)]


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "t"
    rng = np.random.default_rng(0)
    with TraceWriter(path, LAYERS, model="m", source="s", chunk_iterations=3) as w:
        for _ in range(7):
            w.append({l.name: rng.standard_normal((l.rows, l.cols)).astype(np.float32)
                      for l in LAYERS})
    return path


def copy_trace(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def simulate_or_error(path):
    """Opening, validating and simulating either works or raises a TimesimError."""
    try:
        tr = TraceDir(path)
        tr.validate()
        timesim.simulate(timesim.load_hwconfig(), tr)
    except TimesimError:
        pass


paths = st.lists(st.one_of(st.sampled_from(["format", "version", "model", "iterations",
                                            "chunk_iterations", "dtype", "layers", "batch_size",
                                            "checksums", "name", "kind", "rows", "cols",
                                            "kernel", "in_channels", "stride", "complete"]),
                           st.integers(0, 3)), min_size=1, max_size=3)


@FUZZ
@given(edits=st.lists(st.tuples(paths, scalars | docs), min_size=1, max_size=3))
def test_random_manifest_edits(tmp_path, good_trace, edits):
    import uuid
    path = copy_trace(good_trace, tmp_path / uuid.uuid4().hex)
    doc = yaml.safe_load((path / "manifest.yaml").read_text())
    for where, value in edits:
        node = doc
        for step in where[:-1]:
            try:
                node = node[step]
            except (KeyError, IndexError, TypeError):
                break
        try:
            node[where[-1]] = copy.deepcopy(value)
        except (IndexError, TypeError):
            pass
    (path / "manifest.yaml").write_text(yaml.safe_dump(doc))
    simulate_or_error(path)


@FUZZ
@given(layer=st.sampled_from(["conv", "fc"]), chunk=st.integers(0, 2),
       cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       truncate=st.one_of(st.none(), st.integers(0, 400)), drop_checksums=st.booleans())
def test_random_chunk_damage(tmp_path, good_trace, layer, chunk, cuts, truncate,
                             drop_checksums):
    import uuid
    path = copy_trace(good_trace, tmp_path / uuid.uuid4().hex)
    if drop_checksums:
        doc = yaml.safe_load((path / "manifest.yaml").read_text())
        doc.pop("checksums")
        (path / "manifest.yaml").write_text(yaml.safe_dump(doc))
    f = path / layer / f"{chunk:06d}.npy"
    data = bytearray(f.read_bytes())
    for pos, byte in cuts:
        if pos < len(data):
            data[pos] = byte
    if truncate is not None:
        data = data[:truncate]
    changed = bytes(data) != f.read_bytes()
    f.write_bytes(bytes(data))
    if changed and not drop_checksums:
        with pytest.raises(TimesimError):
            TraceDir(path).validate()
    simulate_or_error(path)


def test_symlink_loop_and_unusable_paths_exit_2(tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    for args in (["run", "--trace", str(tmp_path / "loop")],
                 ["trace", "validate", str(tmp_path / "loop")],
                 ["run", "--hw", str(tmp_path / "loop")],
                 ["run", "--hw", "/dev/null"],
                 ["run", "--trace", "/dev/null"],
                 ["trace", "info", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "timesim", *args], capture_output=True,
                           text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
