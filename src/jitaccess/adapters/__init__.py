"""Adapters: the database, the connectors, the policy file format."""
