"""Billing core: money, schedule rules, storage and the billing and auth operations. Never imports grpc."""
