"""Benchmarks: ``pytest --benchmark`` runs them, ``python -m benchmarks.report`` renders them."""
