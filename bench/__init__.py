"""Benchmarks that print JSON (``python -m bench``); goals are checked here, never in tests."""
