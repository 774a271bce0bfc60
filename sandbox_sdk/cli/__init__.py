"""The ``sandbox-sdk`` command line."""
