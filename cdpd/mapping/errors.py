"""The error a mapping raises when Segment's mapping-kit would throw."""


class MappingError(ValueError):
    """A mapping that cannot be applied (to any message, or to this one); the message says
    why, in Segment's words where it has them."""
