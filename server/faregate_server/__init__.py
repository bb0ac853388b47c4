"""faregate: an inference-cost-aware model router gateway served over gRPC.

The server package is laid out one concern per module; `app.py` is the
composition root that builds the parts and `__main__.py` the command line.
"""

__version__ = "0.1.0"
