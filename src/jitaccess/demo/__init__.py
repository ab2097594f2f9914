"""The demo policy shipped with the package (used by `jitaccess demo` and `make run`)."""
