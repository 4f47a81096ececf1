"""Serving a run's latest values to other tools: Prometheus exposition with dcgm-exporter's names."""
