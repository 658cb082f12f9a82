"""kpn-bench: latency and quality benchmarks (see benchmarks/README.md)."""
