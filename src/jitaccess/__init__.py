"""jitaccess: self-hosted just-in-time privileged access."""

__version__ = "0.1.0"
