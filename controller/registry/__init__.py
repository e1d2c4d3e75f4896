"""The registry: a git repository of settings, canonicals, snapshot index, requests and results."""
