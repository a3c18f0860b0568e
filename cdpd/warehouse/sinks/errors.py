"""What a sink reports when the warehouse itself cannot take cdpd's loads."""

from __future__ import annotations


class UnusableWarehouse(Exception):
    """The warehouse is set up in a way cdpd cannot load into (a PostgreSQL database whose
    encoding is not UTF8, say): every sync fails with this, until it is fixed."""
