"""Keycloak: per-run realm names and documents, and the one client that talks to Keycloak."""
