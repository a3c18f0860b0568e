"""Delivery: from the outbox to every destination that should get each message.

Each destination's lane is a consumer of the outbox: it reads the messages it is owed past its
position, sends them, records failures in the ledger and moves its position; the retry
policy decides what an outcome means. All of it reads and writes the outbox, nothing else.
"""
