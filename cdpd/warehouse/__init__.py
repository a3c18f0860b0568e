"""The warehouse stage: loads the outbox into Segment's warehouse schema, in SQLite or PostgreSQL.

naming (pure) -> mapping (pure: message -> table rows) -> plan (pure: rows + existing columns ->
DDL, values, discards) -> loader (reads the outbox, runs one transaction per batch through a
sink) -> scheduler (the periodic task). `position` tells how far each warehouse has loaded.
"""
