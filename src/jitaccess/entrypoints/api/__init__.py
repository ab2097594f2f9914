"""The REST API: a FastAPI app factory, thin routes, and one place mapping errors to problems."""

from jitaccess.entrypoints.api.app import create_app

__all__ = ["create_app"]
