"""Load testing of the served models: locust users (locustfile), headless runs (run), sweeps (sweep), the closed-loop
generator (closed_loop) and Triton's own metrics (metrics).

May import `client`, the model library and `build.model_config` (the sweep rewrites instance counts); never server,
training or bench.
"""
