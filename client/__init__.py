"""Client tooling for the served SegFormer: preprocessing, segmentation CLI, accuracy checks."""
