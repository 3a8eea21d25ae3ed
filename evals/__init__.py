"""Offline evaluation: dataset adapters, metrics, suites, reports and regression gates."""
