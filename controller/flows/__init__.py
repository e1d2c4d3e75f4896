"""Flows: cold, quick, rewarm, sweep and the serve loop; decisions and ordering only."""
