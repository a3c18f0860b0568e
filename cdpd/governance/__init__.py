"""Governance: the chain of pure processors between normalisation and the outbox append."""
