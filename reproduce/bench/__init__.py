"""Benchmark scripts that write the latency, memory, kernel, step-time and GPU result files (run with ``python -m``)."""
