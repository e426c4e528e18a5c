"""Targets: the embedded local backend and AWS."""
