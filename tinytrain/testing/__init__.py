"""Oracles and helpers for tests and benchmarks (never used by the simulator or CLI)."""
