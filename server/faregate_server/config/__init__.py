"""The configuration: one schema of every field, its default and its rule, and the loader that
reads YAML into it.
"""
