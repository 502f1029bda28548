"""hepascope.bench: throughput and latency benchmarks (see README)."""
