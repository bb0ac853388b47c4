"""The gRPC door: servicers that translate protobuf to domain calls, error rendering, admission and
graceful drain.
"""
