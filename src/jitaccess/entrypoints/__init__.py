"""Entrypoints: the HTTP API, the CLI and the worker loop."""
