"""Subscriptions and mappings: which messages an action takes (FQL), and the shape it sends
(mapping-kit directives). Pure functions over a decoded message."""
