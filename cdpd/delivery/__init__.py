"""Delivery: from the outbox to every destination that should get each message.

The router turns new messages into deliveries (one per message and eligible destination), each
destination's lane claims due deliveries, sends them and records every attempt; the retry
policy decides what an outcome means. All of it reads and writes the outbox, nothing else.
"""
