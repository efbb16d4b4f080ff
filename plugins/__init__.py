"""The LayerNorm TensorRT plugin (CUDA/C++ in src/, CMake) and Python helpers to build, load and check it.

Imports nothing of this project except `bench`'s CUDA timing helper (plugins.bench).
"""
