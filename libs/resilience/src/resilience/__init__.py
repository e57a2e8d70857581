"""Deadlines, retries with a budget, circuit breakers and bulkheads for gRPC clients."""
