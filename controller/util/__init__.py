"""Small helpers shared by every layer: errors, subprocesses, time, locks, paths, logging."""
