"""The console's tables in the outbox (migration 5): the flow counts. Kept in a module of
their own, with nothing to import, so the outbox's migrations can list them."""

MIGRATION = """
-- console: flow counts per minute and per hour (cdpd/console/flow.py)
CREATE TABLE flow_counts (
    scope  TEXT NOT NULL,
    name   TEXT NOT NULL,
    minute TEXT NOT NULL,
    metric TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    count  INTEGER NOT NULL,
    PRIMARY KEY (scope, name, minute, metric, reason)
) WITHOUT ROWID;
CREATE INDEX flow_counts_minute ON flow_counts (minute);
CREATE TABLE flow_latency (
    destination TEXT NOT NULL,
    minute      TEXT NOT NULL,
    bucket_ms   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (destination, minute, bucket_ms)
) WITHOUT ROWID;
-- the same, per hour, for the long windows (24 hours, 7 days): a week is 168 rows a series
CREATE TABLE flow_counts_hourly (
    scope  TEXT NOT NULL,
    name   TEXT NOT NULL,
    hour   TEXT NOT NULL,
    metric TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    count  INTEGER NOT NULL,
    PRIMARY KEY (scope, name, hour, metric, reason)
) WITHOUT ROWID;
CREATE INDEX flow_counts_hourly_hour ON flow_counts_hourly (hour);
CREATE TABLE flow_latency_hourly (
    destination TEXT NOT NULL,
    hour        TEXT NOT NULL,
    bucket_ms   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (destination, hour, bucket_ms)
) WITHOUT ROWID;
CREATE TABLE flow_cursors (
    name    TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
"""
