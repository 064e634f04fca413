"""Forwarding the loan event log to message brokers: NATS JetStream (``lending-grpc relay``)."""
