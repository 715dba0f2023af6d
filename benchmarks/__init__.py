"""Benchmarks: each compares against baselines in the same run and prints a table."""
