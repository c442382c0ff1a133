"""Regenerate the bundled example trace that `timesim run` uses with no arguments.

    python traces/make_example.py

Synthetic MLP 64-128-16-10 (see docs/workloads.md), 90 iterations in float16: ~1.9 MB, under the
2 MB budget for package data. Longer or bigger traces: `timesim trace synth` (not committed).
"""

from pathlib import Path

from timesim.trace import TraceWriter
from timesim.trace.synth import SynthTrace

OUT = Path(__file__).resolve().parent.parent / "timesim" / "data" / "traces" / "example-mlp-small"


def main() -> None:
    synth = SynthTrace("mlp-small", iterations=90, seed=0, chunk=30)
    meta = synth.meta
    with TraceWriter(OUT, meta.layers, model=meta.model, source=meta.source,
                     dataset=meta.dataset, batch_size=meta.batch_size, dtype="float16",
                     chunk_iterations=meta.chunk_iterations, overwrite=True) as writer:
        for chunk in synth.chunks():
            writer.append_chunk(chunk.arrays)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
