"""Seeing what faregate does: per-request observations, Prometheus metrics, the request log and the
admin HTTP endpoint.
"""
