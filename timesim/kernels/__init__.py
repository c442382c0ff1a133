"""numba kernels: policy selection and ARS (select), half-precision decoding (convert), synthetic
gradients (synth). Kernels never know about time; the engine never sees gradients."""
