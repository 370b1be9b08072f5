"""Benchmarks of audiosocket-ai: one command each (``python -m benchmarks.NAME``), see README.md.

A package so that the scripts share one copy of their helpers (``benchmarks.common``).
"""
