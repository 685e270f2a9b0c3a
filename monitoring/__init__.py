"""Prometheus metrics, consumer lag, the operator's panels (Grafana, the built-in /dashboard, gfm status) and
alert rules."""
