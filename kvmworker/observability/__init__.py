"""What the operator on call sees of a running worker: Prometheus metrics, probes and one log line per command."""
