"""Tornado handlers, one module per resource, each exporting ``default_handlers``."""
