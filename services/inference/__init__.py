"""The inference service (see server.py and README.md)."""
