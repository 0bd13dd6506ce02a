"""Class-level singleton managers: one module per backing service.

Each manager is created once by ``service.lifecycle.startup`` before the port
opens, reached everywhere else through ``Manager.instance()``, and closed in
reverse order on shutdown. Nothing outside this package touches a driver.
"""
