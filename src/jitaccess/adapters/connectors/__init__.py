"""Connectors: where access becomes real in a target system."""
