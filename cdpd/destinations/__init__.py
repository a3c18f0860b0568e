"""Destinations: one module per kind, each turning claimed deliveries into requests to its API.

`registry.build` maps a config entry's `type` to its class.
"""
