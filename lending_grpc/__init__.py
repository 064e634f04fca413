"""lending-grpc: a loan billing service over gRPC."""
