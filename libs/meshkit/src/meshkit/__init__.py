"""Shared plumbing for resilient-mesh services."""
