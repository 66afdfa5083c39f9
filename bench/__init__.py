"""Benchmarks and experiments; bench/common.py says how the scripts share code, bench/RESULTS.md what they measured."""
