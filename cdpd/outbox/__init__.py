"""The outbox: the durable SQLite log that holds every message before it is acknowledged.

Later stages (delivery, warehouse) read it; nothing calls them from the request handler.
"""
