"""--threads N: layers on N threads give the same results as one (DESIGN §9)."""

import json

import numpy as np
import pytest

import timesim
from timesim.cli import main
from timesim.config import bundled_hwconfig

WALL = ("run",)


def strip(r):
    return json.loads(json.dumps({k: v for k, v in r.items() if k not in WALL}))


def same(a, b):
    assert strip(a) == strip(b)


@pytest.mark.parametrize("sets", [
    ["controller.selection=sgs", "controller.interval=16"],
    ["controller.selection=topk", "controller.topk_density=0.01",
     "controller.wear_leveling=none"],
    ["controller.selection=sgs-row", "write.pulses=delta", "controller.wear_leveling=ars-random",
     "controller.interval=8"],
    ["controller.selection=dense", "controller.wear_leveling=none"]])
def test_threads_do_not_change_results(sets):
    hw = timesim.load_hwconfig(None, sets)
    trace = "synth:resnet20?iterations=64&chunk=16"
    one = timesim.simulate(hw, trace, threads=1)
    for n in (2, 3, 7):
        same(one, timesim.simulate(hw, trace, threads=n))


def test_threads_on_a_half_precision_trace_with_nonfinite_values(tmp_path):
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "40", "--dtype",
                 "bfloat16", "--chunk", "8", "--out", str(tmp_path / "t")]) == 0
    # poison one value of one layer in one chunk
    layer = sorted(p.name for p in (tmp_path / "t").iterdir() if p.is_dir())[0]
    path = tmp_path / "t" / layer / "000002.npy"
    arr = np.load(path)
    arr[3].flat[0] = 0x7FC0                               # a bfloat16 NaN
    np.save(path, arr)
    man = tmp_path / "t" / "manifest.yaml"
    man.write_text("\n".join(l for l in man.read_text().splitlines()
                             if "crc32" not in l and not l.startswith("checksums")) + "\n")
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["controller.selection=sgs"])
    one = timesim.simulate(hw, str(tmp_path / "t"), threads=1, nonfinite="skip")
    two = timesim.simulate(hw, str(tmp_path / "t"), threads=2, nonfinite="skip")
    same(one, two)
    assert one["nonfinite"]["iterations_skipped"] == 1
    # errors name the same (first) layer and iteration whatever the threads
    msgs = []
    for n in (1, 2):
        with pytest.raises(timesim.TraceError) as e:
            timesim.simulate(hw, str(tmp_path / "t"), threads=n)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "iteration 19" in msgs[0]


def test_threads_must_be_positive():
    with pytest.raises(timesim.ConfigError, match="threads"):
        timesim.simulate(timesim.load_hwconfig(), "synth:mlp-small?iterations=2", threads=0)
