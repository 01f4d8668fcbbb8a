"""Plumbing a reader may skip: processes, run folders, model files, the command line and
the sandbox's kernel layers (plumbing/README.md)."""
