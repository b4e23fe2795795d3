"""Benchmarks: `python -m bench.run [NAME ...] [options]` (or `make bench`) prints one JSON object.

Each benchmark is a module listed in `bench.run.BENCHMARKS` exposing `run(argv) -> dict`.
"""
