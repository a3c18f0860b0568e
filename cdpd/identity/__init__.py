"""Unify: identity resolution into profiles (rules, graph, store, the consumer stage) and
Segment's Profile API over them."""
