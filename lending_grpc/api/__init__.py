"""gRPC edge: servicers, interceptors and proto <-> core conversion."""
