"""nbwss: an open implementation of the NetBackup WebSocket Service."""

__version__ = "0.1.0"
