"""Generated gRPC stubs of proto/ (scripts/generate_proto.py)."""
