"""The model providers: the catalog of configured models, their worker pools and breakers, token
counting, and the provider adapters.
"""
