"""Benchmarks whose results land in `docs/results/`: engine build times (`bench.build_times`) and the GPU fast path
vs Hugging Face, model-only and served (`bench.gpu`). Load generators live in `loadtest/`.

May import any room (it measures them); no room imports bench except `plugins.bench`, for its CUDA timing helper.
Every bench runs its command through `client.cli.run`: a BenchError is one `error:` line and exit 2.
"""
from segformer.errors import ProjectError


class BenchError(ProjectError):
    """A benchmark cannot run here (no GPU, no data, an unknown scenario); the message names the fix."""
