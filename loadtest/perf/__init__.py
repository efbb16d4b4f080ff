"""Triton's own measuring tools beside the project's: perf_analyzer (`python -m loadtest.perf`) side by side with
the closed-loop generator, and Model Analyzer's configs for the rows (`python -m loadtest.perf.tune`).

- `binary`: where perf_analyzer comes from (the pip wheel, or fetched and made runnable on an older glibc);
- `analyzer`: perf_analyzer's input data from the input policy's frames, its command line, its CSV;
- `compare`: one results file with both tools' numbers for the same model, concurrency and payload;
- `tuning`: Model Analyzer's profile configs (validate with its parser, apply the chosen settings to config.pbtxt);
- `profile`: Model Analyzer's run on the rows and the chosen settings it leaves.
"""
