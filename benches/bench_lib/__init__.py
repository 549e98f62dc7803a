"""Shared pieces of the end-to-end benchmarks: result files, datasets, serving metrics,
and a server launcher. Imported as `bench_lib` (benches/ is on `sys.path` when a
benchmark runs as `python benches/NAME.py`)."""
