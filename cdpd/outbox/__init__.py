"""The outbox: the durable SQLite log every accepted message is written to before it is acknowledged.

Later stages (delivery, warehouse) read it; nothing calls them from the request handler.
"""
