"""Synthetic DiVertAnalysis-like inputs for tests, benchmarks and the demo."""
