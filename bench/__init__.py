"""Throughput benchmarks: each prints one JSON line (protocols.md section 4)."""
