"""The request path's core: plan a route, pick a model, run the attempts, settle the money. Knows
no wire protocol and imports no telemetry: it reports through the protocols of hooks.py and
scope.py, which telemetry implements.
"""
