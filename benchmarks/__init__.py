"""Benchmarks: scripts that measure and compare side by side; never run as timed tests."""
