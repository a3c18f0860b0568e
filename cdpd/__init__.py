"""cdpd: a self-hosted customer data platform daemon that speaks the Segment Tracking API."""

__version__ = "0.1.0"
