"""Trace format v1: writer/reader round trips, crash safety, validation of damaged traces."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from timesim.errors import TraceError
from timesim.kernels.convert import to_float32
from timesim.trace import LayerInfo, TraceDir, TraceWriter, open_trace
from timesim.trace.writer import float32_to_bfloat16_bits

LAYERS = [LayerInfo(name="conv1", kind="conv2d", rows=18, cols=4, kernel=(3, 3), in_channels=2,
                    out_channels=4, input_hw=(8, 8), output_hw=(8, 8), stride=(1, 1),
                    padding=(1, 1)),
          LayerInfo(name="fc.0", kind="linear", rows=7, cols=3)]


def grads(T, seed=0):
    rng = np.random.default_rng(seed)
    return {l.name: rng.standard_normal((T, l.rows, l.cols)).astype(np.float32) for l in LAYERS}


def write_trace(path, T=10, dtype="float32", chunk=4, seed=0):
    g = grads(T, seed)
    with TraceWriter(path, LAYERS, model="toy", source="test", dtype=dtype,
                     chunk_iterations=chunk) as w:
        for t in range(T):
            w.append({name: g[name][t] for name in g})
    return g


def _mapped(a) -> bool:
    """``a`` is a view of a file mapping (np.memmap, or an array over an mmap.mmap)."""
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return False


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_all_dtypes(tmp_path, dtype):
    g = write_trace(tmp_path / "t", T=10, dtype=dtype, chunk=4)
    tr = open_trace(tmp_path / "t")
    m = tr.meta
    assert (m.iterations, m.chunk_iterations, m.n_chunks, m.dtype) == (10, 4, 3, dtype)
    assert [l.name for l in m.layers] == ["conv1", "fc.0"] and m.layers[0] == LAYERS[0]
    seen = {name: [] for name in g}
    for chunk in tr.chunks():
        assert chunk.t0 == chunk.index * 4 and chunk.n == min(4, 10 - chunk.t0)
        for name, arr in chunk.arrays.items():
            assert _mapped(arr)                               # streamed, not loaded
            seen[name].append(to_float32(arr, dtype))
    for name in g:
        got = np.concatenate(seen[name])
        if dtype == "float32":
            want = g[name]
        elif dtype == "float16":
            want = g[name].astype(np.float16).astype(np.float32)
        else:
            want = to_float32(float32_to_bfloat16_bits(g[name]), "bfloat16")
        np.testing.assert_array_equal(got, want)
    info = tr.validate()
    assert info["chunks"] == 3 and info["checksums"] == 6


def test_manifest_matches_design_fields(tmp_path):
    write_trace(tmp_path / "t")
    raw = yaml.safe_load((tmp_path / "t" / "manifest.yaml").read_text())
    assert raw["format"] == "timesim-trace" and raw["version"] == 1
    for key in ("model", "source", "dataset", "batch_size", "iterations", "chunk_iterations",
                "dtype", "layers"):
        assert key in raw
    conv = raw["layers"][0]
    assert conv["kernel"] == [3, 3] and conv["in_channels"] == 2 and conv["output_hw"] == [8, 8]
    assert sorted(raw["checksums"]) == sorted(f"{l.name}/{i:06d}.npy" for l in LAYERS
                                              for i in range(3))


def test_exception_inside_writer_leaves_no_valid_trace(tmp_path):
    with pytest.raises(RuntimeError):
        with TraceWriter(tmp_path / "t", LAYERS, model="toy", source="t", chunk_iterations=2) as w:
            g = grads(5)
            for t in range(5):
                w.append({n: g[n][t] for n in g})
            raise RuntimeError("killed")
    assert any((tmp_path / "t" / "conv1").iterdir())          # chunks were written ...
    with pytest.raises(TraceError, match="incomplete trace: no manifest.yaml"):
        TraceDir(tmp_path / "t")                              # ... but nothing validates


def test_refuses_to_overwrite_without_force(tmp_path):
    write_trace(tmp_path / "t")
    with pytest.raises(TraceError, match="not empty"):
        write_trace(tmp_path / "t")


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[-3] ^= 0xFF
    elif how == "truncate":
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how,needle", [("flip", "checksum mismatch"),
                                        ("truncate", "checksum mismatch")])
def test_damaged_chunk_is_named(tmp_path, how, needle):
    write_trace(tmp_path / "t")
    corrupt(tmp_path / "t" / "fc.0" / "000001.npy", how)
    with pytest.raises(TraceError, match=f"fc.0/000001.npy: {needle}"):
        TraceDir(tmp_path / "t").validate()
    with pytest.raises(TraceError, match="fc.0/000001.npy"):
        for _ in TraceDir(tmp_path / "t").chunks():
            pass


def edit_manifest(path, fn):
    m = yaml.safe_load((path / "manifest.yaml").read_text())
    fn(m)
    (path / "manifest.yaml").write_text(yaml.safe_dump(m))


def test_truncated_chunk_without_checksums(tmp_path):
    write_trace(tmp_path / "t")
    edit_manifest(tmp_path / "t", lambda m: m.pop("checksums"))
    corrupt(tmp_path / "t" / "conv1" / "000002.npy", "truncate")
    with pytest.raises(TraceError, match="conv1/000002.npy: not a readable .npy"):
        TraceDir(tmp_path / "t").validate()


def test_missing_chunk_wrong_shape_wrong_dtype(tmp_path):
    write_trace(tmp_path / "t")
    (tmp_path / "t" / "conv1" / "000001.npy").unlink()
    with pytest.raises(TraceError, match="conv1/000001.npy: missing"):
        TraceDir(tmp_path / "t").validate()
    write_trace(tmp_path / "u")
    edit_manifest(tmp_path / "u", lambda m: m.pop("checksums"))
    np.save(tmp_path / "u" / "fc.0" / "000000.npy", np.zeros((4, 7, 2), np.float32))
    with pytest.raises(TraceError, match=r"shape \(4, 7, 2\), expected \(4, 7, 3\)"):
        TraceDir(tmp_path / "u").validate()
    np.save(tmp_path / "u" / "fc.0" / "000000.npy", np.zeros((4, 7, 3), np.float64))
    with pytest.raises(TraceError, match="dtype float64, expected float32"):
        TraceDir(tmp_path / "u").validate()
    np.save(tmp_path / "u" / "fc.0" / "000000.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(TraceError, match="fc.0/000000.npy"):                # no pickles
        TraceDir(tmp_path / "u").validate()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_nonfinite_values_named_by_layer_and_iteration(tmp_path, dtype):
    g = grads(10)
    g["fc.0"][6, 2, 1] = np.inf
    with TraceWriter(tmp_path / "t", LAYERS, model="toy", source="t", dtype=dtype,
                     chunk_iterations=4) as w:
        for t in range(10):
            w.append({n: g[n][t] for n in g})
    with pytest.raises(TraceError, match="layer fc.0: chunk 000001.npy: iteration 6: non-finite"):
        TraceDir(tmp_path / "t").validate()


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(format="other"), "format: must be 'timesim-trace'"),
    (lambda m: m.update(version=3), "version: only version 1"),
    (lambda m: m.update(iterations=-5), "iterations: must be in"),
    (lambda m: m.update(iterations=2**50), "iterations: must be in"),
    (lambda m: m.update(dtype="int8"), "dtype: must be one of"),
    (lambda m: m.update(layers=[]), "layers: must be a non-empty list"),
    (lambda m: m["layers"][1].update(rows=0), "layers[1] (fc.0).rows: must be in"),
    (lambda m: m["layers"][1].update(name="../evil"), "layers[1].name"),
    (lambda m: m["layers"][0].update(in_channels=3), "does not match in_channels"),
    (lambda m: m["layers"][1].update(kind="lstm"), "kind: must be one of"),
    (lambda m: m["layers"].append(dict(m["layers"][1])), "duplicate layer name 'fc.0'"),
    (lambda m: m.update(surprise=1), "surprise: unknown key"),
    (lambda m: m.update(updates=3), "updates: must be a string"),
    (lambda m: m.update(updates="top-k"), "updates: must be one of dense|topk|"),
])
def test_bad_manifests_name_the_key(tmp_path, edit, needle):
    write_trace(tmp_path / "t")
    edit_manifest(tmp_path / "t", edit)
    with pytest.raises(TraceError) as err:
        TraceDir(tmp_path / "t")
    assert needle in str(err.value) and "manifest.yaml" in str(err.value)


def test_manifest_not_a_mapping_and_missing_paths(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "manifest.yaml").write_text("- a\n- b\n")
    with pytest.raises(TraceError, match="must be a YAML mapping"):
        TraceDir(tmp_path / "t")
    with pytest.raises(TraceError, match="no such trace directory"):
        TraceDir(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(TraceError, match="not a directory"):
        TraceDir(tmp_path / "f")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(TraceError):
        TraceDir(tmp_path / "loop")


def test_killed_trace_synth_leaves_nothing_valid(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "timesim", "trace", "synth", "--model",
                             "resnet20", "--iterations", "100000", "--chunk", "16", "--out",
                             str(out), "--no-space-check"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:                 # wait until chunks are being written
        if (out / "fc").is_dir() and len(list((out / "fc").iterdir())) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "fc").is_dir() and not (out / "manifest.yaml").exists()
    r = subprocess.run([sys.executable, "-m", "timesim", "trace", "validate", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "incomplete trace" in r.stderr
    assert "Traceback" not in r.stderr


def test_only_the_last_chunk_may_be_short(tmp_path):
    from timesim.errors import TraceError

    layers = [LayerInfo(name="a", kind="linear", rows=3, cols=2)]
    w = TraceWriter(tmp_path / "t", layers, model="m", source="s", chunk_iterations=4)
    w.append_chunk({"a": np.zeros((2, 3, 2), np.float32)})        # short
    with pytest.raises(TraceError, match="only the last chunk may be short"):
        w.append_chunk({"a": np.zeros((4, 3, 2), np.float32)})
    with pytest.raises(TraceError, match="only the last chunk may be short"):
        w.append({"a": np.zeros((3, 2), np.float32)})
    meta = w.close()
    assert meta.iterations == 2


def test_force_replaces_a_trace_but_never_another_folder(tmp_path):
    from timesim.cli import main

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "3", "--out",
                 str(other), "--force"]) == 2
    assert (other / "cat.jpg").read_bytes() == b"meow"
    t = tmp_path / "t"
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "3", "--out",
                 str(t)]) == 0
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "5", "--out",
                 str(t), "--force"]) == 0
    assert open_trace(str(t)).meta.iterations == 5


def test_trace_synth_says_its_size_and_refuses_what_the_disk_cannot_hold(tmp_path, capsys):
    from timesim.cli import main

    assert main(["trace", "synth", "--model", "vgg16", "--iterations", "10000000", "--out",
                 str(tmp_path / "big")]) == 2
    captured = capsys.readouterr()          # one line: the size, the free space, what to do
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "needs" in captured.err and "TB" in captured.err
    assert "--no-space-check" in captured.err
    assert not (tmp_path / "big").exists()
    assert main(["trace", "synth", "--model", "resnet20", "--iterations", "2", "--out",
                 str(tmp_path / "small")]) == 0
    assert "writing" in capsys.readouterr().out              # the size, once it will be written


def test_conv2d_without_output_hw_is_refused(tmp_path):
    import yaml

    from timesim.errors import TraceError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.yaml").write_text(yaml.safe_dump({
        "format": "timesim-trace", "version": 1, "model": "m", "iterations": 1,
        "chunk_iterations": 1, "dtype": "float32", "timing_only": True,
        "layers": [{"name": "c", "kind": "conv2d", "rows": 27, "cols": 8, "kernel": [3, 3],
                    "in_channels": 3, "out_channels": 8, "input_hw": [32, 32]}]}))
    with pytest.raises(TraceError, match="output_hw: missing"):
        open_trace(str(tmp_path / "m"))


def test_prefetching_reader_gives_the_same_chunks_and_errors_in_order(tmp_path):
    """The reader thread changes nothing: same arrays, the layer subset reads only its files,
    and a corrupted chunk file is reported when its array is first used (by the thread that
    uses it), or, unread, before the next chunk: after the earlier ones, before any later."""
    from timesim.cli import main
    from timesim.trace import TraceDir

    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "40",
                             "--chunk", "8", "--out", str(tmp_path / "t")]) == 0
    t = TraceDir(tmp_path / "t")
    a = [{k: np.array(v) for k, v in c.arrays.items()} for c in t.chunks(prefetch=True)]
    b = [{k: np.array(v) for k, v in c.arrays.items()} for c in t.chunks(prefetch=False)]
    assert len(a) == 5 and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    sub = next(iter(t.chunks(layers=["fc2"])))
    assert list(sub.arrays) == ["fc2"]
    bad = tmp_path / "t" / "fc1" / "000003.npy"
    bad.write_bytes(bad.read_bytes()[:-4] + b"\0\0\0\1")
    for prefetch in (True, False):
        seen = []
        with pytest.raises(TraceError, match="000003.npy: checksum mismatch"):
            for c in TraceDir(tmp_path / "t").chunks(prefetch=prefetch):
                seen.append(c.index)
                assert c.arrays["fc2"].shape[0] == 8      # chunk 3's intact layer reads
                c.arrays["fc1"]
                seen.append("fc1")
        assert seen == [0, "fc1", 1, "fc1", 2, "fc1", 3]
        seen = []
        with pytest.raises(TraceError, match="000003.npy: checksum mismatch"):
            for c in TraceDir(tmp_path / "t").chunks(prefetch=prefetch):
                seen.append(c.index)                     # nothing read
        assert seen == [0, 1, 2, 3]


def test_crc32_folded_by_carryless_multiplication_is_zlibs():
    """kernels/crc.py against zlib.crc32: every length 0..300 (the table-only tail, one to
    four 64-byte folds, a 16-byte remainder), misaligned slices, a running crc carried over
    from a first part, buffers of one repeated byte, and a long random buffer; bytes, mmap-like
    memoryviews and numpy arrays."""
    import zlib

    from timesim.kernels import crc as C

    rng = np.random.default_rng(11)
    big = rng.integers(0, 256, (1 << 20) + 37, dtype=np.uint8)
    for n in list(range(301)) + [4095, 4096, 4097, 65536 + 13]:
        for off in (0, 1, 7):
            part = big[off:off + n]
            want = zlib.crc32(part.tobytes())
            assert C.crc32(part) == want
            if C.FAST and n >= 64:          # the folding kernel itself, below crc32's cutoff
                assert int(C._crc32_clmul(part, np.uint32(0), C._TABLE)) == want
    for n, cut in ((5000, 1234), (100000, 64), (70000, 69999)):
        data = big[:n].tobytes()
        first = C.crc32(data[:cut])
        assert C.crc32(data[cut:], first) == zlib.crc32(data)
        if C.FAST:
            assert int(C._crc32_clmul(big[cut:n], np.uint32(first), C._TABLE)) == \
                zlib.crc32(data)
    for byte in (0x00, 0xFF, 0x5A):
        data = bytes([byte]) * 10007
        assert C.crc32(data) == zlib.crc32(data)
        assert C.crc32(memoryview(data)) == zlib.crc32(data)
    assert C.crc32(big) == zlib.crc32(big.tobytes())


def test_validate_names_chunk_files_and_folders_the_manifest_does_not_count(tmp_path, capsys):
    """A stray chunk (a copy, or a manifest of fewer iterations than were written) is never
    read: validate says so rather than calling the folder simply valid."""
    import shutil

    from timesim.cli import main

    write_trace(tmp_path / "t", T=10, chunk=4)                 # chunks 000000-000002
    assert TraceDir(tmp_path / "t").validate()["extra_files"] == []
    shutil.copy(tmp_path / "t" / "fc.0" / "000002.npy", tmp_path / "t" / "fc.0" / "000005.npy")
    (tmp_path / "t" / "junk").mkdir()
    info = TraceDir(tmp_path / "t").validate()
    assert info["extra_files"] == ["fc.0/000005.npy"] and info["extra_dirs"] == ["junk"]
    assert main(["trace", "validate", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 file not read (chunk files beyond the manifest's iterations): " \
        "fc.0/000005.npy" in out and "junk" in out
