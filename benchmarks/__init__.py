"""The benchmark suite of crypto-collector: ``python -m benchmarks.run`` (see benchmarks/README.md)."""
