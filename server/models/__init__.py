"""Programs that run inside Triton's python backend, one file per model kind, copied as `1/model.py`.

Self-contained: they import only numpy, the backend's `triton_python_backend_utils` and their runtime (ONNX
Runtime, or the model library copied beside the GPU model) — nothing else of this project.
"""
