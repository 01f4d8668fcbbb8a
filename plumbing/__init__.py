"""Plumbing a reader may skip: processes, run folders, model files, the command line, the sandbox's kernel layers."""
