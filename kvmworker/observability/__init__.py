"""What the operator on call sees of a running worker: Prometheus metrics, probes and one log line per command."""

from kvmworker.lazyimport import parts_only

# the metric types and registries only: the exposition (http.server, wsgiref, urllib) loads with the health port
parts_only("prometheus_client")
