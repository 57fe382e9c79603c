"""The pruner service (see server.py and README.md)."""
