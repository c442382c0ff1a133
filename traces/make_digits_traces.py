"""Record real training traces on scikit-learn's 8x8 digits (no download).

    python traces/make_digits_traces.py                 # the committed example traces
    python traces/make_digits_traces.py --model mlp --policy sgs --iterations 64000 \\
        --dtype float16 --out traces/mlp-sgs-64k         # any other (not committed)

Committed (each under 2 MB, float16):
- timesim/data/traces/digits-lenet-sgs   LeNet-like CNN under SGS, the last 256 of 1000
                                         iterations: the trace that `timesim run` replays with
                                         no arguments (package data); its weights.npz is the
                                         trained model (test accuracy ~0.96) that
                                         `timesim run --faults` evaluates under wear
- traces/digits-lenet-dense              the same CNN under dense SGD, 256 iterations
- traces/digits-mlp-sgs                  MLP 64-256-256-10 under SGS, first 10 iterations
"""

import argparse
import shutil
from pathlib import Path

import timesim
from timesim.examples.digits import train

ROOT = Path(__file__).resolve().parent.parent
# (model, policy, iterations trained, iterations recorded (the last ones), folder): 256
# iterations of SGS from scratch leave the LeNet untrained (test accuracy 0.20), so the bundled
# trace is the end of a 1000-iteration training, whose weights are a trained model
COMMITTED = [
    ("lenet", "sgs", 1000, 256, ROOT / "timesim" / "data" / "traces" / "digits-lenet-sgs"),
    ("lenet", "dense", 256, 256, ROOT / "traces" / "digits-lenet-dense"),
    ("mlp", "sgs", 10, 10, ROOT / "traces" / "digits-mlp-sgs"),
]


def record(model: str, policy: str, iterations: int, out: Path, dtype: str, chunk: int,
           last: int | None = None) -> None:
    hw = None if policy == "dense" else timesim.load_hwconfig(
        None, [f"controller.selection={policy}"])
    if out.exists():
        shutil.rmtree(out)
    r = train(model, iterations=iterations, hw=hw, record=str(out), record_dtype=dtype,
              chunk_iterations=chunk, record_last=last)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {model} under {policy}, the last {last or iterations} of {iterations} "
          f"iterations, {dtype}, "
          f"{size / 1e6:.2f} MB, test accuracy {r.test_accuracy:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "lenet"))
    ap.add_argument("--policy", default="sgs",
                    choices=("dense", "topk", "sgs", "sgs-row", "sgs-element"))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--last", type=int, help="record only the last LAST iterations")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.model is None:
        for model, policy, iterations, last, out in COMMITTED:
            record(model, policy, iterations, out, "float16", 64, last)
    else:
        if not a.out:
            ap.error("--out is required with --model")
        record(a.model, a.policy, a.iterations, Path(a.out), a.dtype, a.chunk, a.last)


if __name__ == "__main__":
    main()
