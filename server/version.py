"""The gate's version (the one protocol.version holds for both sides)."""

from protocol.version import VERSION

__all__ = ["VERSION"]
