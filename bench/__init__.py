"""Benchmark harness: this server next to its peers (see bench/README.md; run with bench/run)."""
