"""Engage: computed traits and audiences over profiles, in Segment's query language.

syntax (text -> tree) -> plan (tree -> closures and streams) -> catalog (definitions in
dependency order) -> state (a profile's aggregates: apply, merge) -> messages (what is sent
for each change) -> store (SQLite: states, values, changes; preview).
"""
