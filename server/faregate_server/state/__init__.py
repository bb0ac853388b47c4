"""Durable and shared state: budgets, limit pools, the spend ledger and request-id replay, in
memory, SQLite or Redis.
"""
