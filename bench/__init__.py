"""Benchmarks and the fleet simulator. Run from the repository root, e.g. ``python -m bench.fleet``;
see bench/README.md and docs/benchmarks.md."""
