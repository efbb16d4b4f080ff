"""Benchmarks whose results land in `docs/results/`: engine build times (`bench.build_times`) and the GPU fast path
vs Hugging Face, model-only and served (`bench.gpu`). Load generators live in `loadtest/`.

May import any room (it measures them); no room imports bench except `plugins.bench`, for its CUDA timing helper.
"""
