"""The request path's core: plan a route, pick a model, run the attempts, settle the money. Knows
no wire protocol.
"""
