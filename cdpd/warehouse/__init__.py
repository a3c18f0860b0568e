"""The warehouse stage: loads the outbox into Segment's warehouse schema, in SQLite or PostgreSQL.

naming (pure) -> mapping (pure: message -> table rows) -> plan (pure: rows + existing columns ->
DDL, values, discards) -> batches (reads the outbox and maps and plans a batch, one ahead, in a
thread or a worker process) -> loader (one transaction per batch through a sink) -> scheduler
(the periodic task). `position` tells how far each warehouse has loaded.
"""
