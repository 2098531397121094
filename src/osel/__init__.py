"""osel: the OpenStack Event Listener."""

__version__ = "2.0.0.dev0"
