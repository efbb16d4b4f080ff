"""Client tooling for the served SegFormer: preprocessing, segmentation CLI, accuracy checks.

Imports only the model library (`segformer`): nothing of build, server, training, bench or loadtest.
"""
