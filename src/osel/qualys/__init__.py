"""The Qualys VM API v2 scan backend: client, shared budget, backend."""
