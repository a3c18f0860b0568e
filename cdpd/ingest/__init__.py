"""Ingest: the Segment HTTP Tracking API. Authenticates, checks and normalises messages and hands
them to the outbox writer; it never calls a later stage."""
