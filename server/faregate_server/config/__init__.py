"""The configuration: one schema of every field, its default and its rule (`schema`, assembled
from a module per section), and the loader that reads YAML into it (`load`).
"""
