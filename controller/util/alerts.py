"""Alerts: files under `<state>/alerts/` plus a log line; `ccci status` shows them."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from controller.util.files import atomic_write_json, read_json
from controller.util.paths import StateDir
from controller.util.timeutil import now_iso

log = logging.getLogger("controller.alerts")


def raise_alert(state: StateDir, key: str, message: str, **details: Any) -> Path:
    """Write (or refresh) the alert `key`; the same key overwrites, so a repeating fault
    is one alert, not a flood."""
    state.alerts.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:100]
    path = state.alerts / f"{safe}.json"
    doc = {"key": key, "message": message, "raised_at": now_iso(), **details}
    atomic_write_json(path, doc)
    log.error("ALERT %s: %s", key, message)
    return path


def clear_alert(state: StateDir, key: str) -> None:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:100]
    (state.alerts / f"{safe}.json").unlink(missing_ok=True)


def list_alerts(state: StateDir) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not state.alerts.is_dir():
        return out
    for path in sorted(state.alerts.glob("*.json")):
        doc = read_json(path)
        out.append(doc if isinstance(doc, dict) else {"key": path.stem, "message": "unreadable alert file"})
    return out
