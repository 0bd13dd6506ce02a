"""Class-level singleton managers: one module per backing service, one each for the
config, the logger, the metrics, the WebSocket hub and the health monitor, and what
they share (base.py: the singleton shape; background.py: a background loop's failures
and backoff; dependencies.py: the list of backing services).

Each manager is created once by ``service.lifecycle.Lifecycle.start`` before the
port opens, reached everywhere else through ``Manager.instance()``, and closed in
reverse order on shutdown.

A manager owns its service's client: it opens the connection or pool, gives every
call a deadline, reconnects, and closes it. Nothing outside this package opens a
connection or imports a driver to call it: the domain runs its statements through
the managers (MySQL transactions, the Redis cache and rate buckets, Kafka sends
and group consumers). One exception, by design: the analytics store
(domain/analytics.py) issues MongoDB commands itself, on the database handle
MongoManager gives it, because its queries are shaped around FerretDB and are the
store's logic; it runs them under the timeouts that client was built with.
"""
