"""Load testing of the served models with locust: users (locustfile), headless runs (run), sweeps (sweep), and
Triton's own metrics (metrics)."""
