"""Load testing of the served models with locust (not built yet: the locustfile and sweep come next)."""
