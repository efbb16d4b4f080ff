"""The build pipeline: train -> export -> graph passes -> engines -> Triton model repository.

The import name is ``build`` because the product's layout promises ``build/`` and ``python -m build.<step>``.
It shadows PyPA's ``build`` tool inside this project's environment only; the Makefile never installs that tool
(wheels are made with ``pip wheel``).
"""
