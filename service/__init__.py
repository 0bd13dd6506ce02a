"""The service: app factory, startup and shutdown, ``python -m service``."""
