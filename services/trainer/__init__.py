"""The trainer service (see server.py and README.md)."""
