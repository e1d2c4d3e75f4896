"""The forge in the flows: PR comments in (intake, by webhook or poll), verdicts out (the
reporter sink and its outbox)."""
