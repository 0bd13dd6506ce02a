"""`make chaos`: fault scenarios against a stack of the run's own, under steady writes,
and the accounting of every payment through MariaDB, Kafka and analytics
(docs/RELIABILITY.md)."""
