"""Programs that run inside Triton's python backend, one file per model kind, copied as `1/model.py`.

Self-contained: they import only numpy, the backend's `triton_python_backend_utils`, their runtime (ONNX
Runtime / OpenVINO, or the model library copied beside the GPU model) and the two shared files `make repo` copies
beside them: `segformer_runtime.py` (file checks, sessions, the OpenVINO plan runner; no Triton import, so `build`
runs its checks on it too) and `segformer_batching.py` (Triton request handling) — nothing else of this project.
Which files a row gets is its backend record's (build.backends).
"""
