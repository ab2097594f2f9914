"""The `api` fixture, for every API test module."""

from support.api import api as api
