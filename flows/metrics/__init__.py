"""Prometheus metrics computed from the database at scrape time (``GET /metrics``)."""
