"""The converter service (see server.py and README.md)."""
