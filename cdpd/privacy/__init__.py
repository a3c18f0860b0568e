"""The Privacy Portal: find personal data in what sources send, and control where it goes."""
