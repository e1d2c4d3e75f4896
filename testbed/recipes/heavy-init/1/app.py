"""heavy-init: a fixture app whose first start costs what real ones do, and whose upgrade is cheap.

A first boot on an empty volume creates the schema step by step (one transaction per step, as
Keycloak's and other SSO apps' migration tools do), then seeds SEED_ROWS rows, each from real
work (an iterated digest), in batches, then builds indexes: tens of seconds on a test-bed
machine. A start on data it already has opens the database and serves at once; a later version
migrates the schema in place with a change that does not rewrite the rows.
"""

import hashlib
import json
import os
import signal
import sqlite3
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = 1
DATA_DIR = os.environ.get("DATA_DIR", "/srv/data")
DB_PATH = os.path.join(DATA_DIR, "app.sqlite")
SCHEMA_STEPS = 40  # tables the first boot creates, one transaction each
ROUNDS = 3000  # digest rounds per seeded row: the seed's CPU work
BATCH = 500
STATE = {"ready": False, "rows": 0, "schema": 0}


def log(*parts):
    print(f"heavy-init v{VERSION}:", *parts, flush=True)


def connect():
    conn = sqlite3.connect(DB_PATH, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def schema_version(conn):
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else 0


def set_meta(conn, key, value):
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (key, str(value)))


def digest(n):
    value = str(n).encode()
    for _ in range(ROUNDS):
        value = hashlib.sha256(value).digest()
    return value.hex()


def first_boot(conn, rows):
    started = time.monotonic()
    for step in range(SCHEMA_STEPS):
        conn.execute("BEGIN")
        conn.execute(f"CREATE TABLE IF NOT EXISTS realm_{step:02d} (id INTEGER PRIMARY KEY, name TEXT, body TEXT)")
        conn.execute(f"INSERT INTO realm_{step:02d} (name, body) VALUES (?, ?)", (f"step {step}", digest(step)))
        conn.execute("COMMIT")
    conn.execute("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, token TEXT NOT NULL)")
    done = conn.execute("SELECT count(*) FROM item").fetchone()[0]  # a restarted first boot resumes
    while done < rows:
        upto = min(rows, done + BATCH)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO item (id, name, token) VALUES (?, ?, ?)",
                         [(n, f"item {n}", digest(n)) for n in range(done + 1, upto + 1)])
        conn.execute("COMMIT")
        done = upto
    conn.execute("CREATE INDEX IF NOT EXISTS item_name ON item (name)")
    conn.execute("CREATE INDEX IF NOT EXISTS item_token ON item (token)")
    set_meta(conn, "rows", rows)
    set_meta(conn, "schema", 1)
    log(f"seeded in {time.monotonic() - started:.1f} s ({rows} rows, {SCHEMA_STEPS} schema steps)")


def prepare():
    os.makedirs(DATA_DIR, exist_ok=True)
    conn = connect()
    schema = schema_version(conn)
    if schema == 0:
        first_boot(conn, int(os.environ.get("SEED_ROWS") or "40000"))
        schema = 1
    if schema > VERSION:
        log(f"the data is at schema {schema}, newer than this version knows")
        sys.exit(1)
    rows = conn.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()
    STATE.update(rows=int(rows[0]) if rows else 0, schema=schema, ready=True)
    log(f"ready at schema {schema} with {STATE['rows']} rows")
    return conn


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            return self.reply(200 if STATE["ready"] else 503, {"ready": STATE["ready"]})
        if self.path == "/stats":
            return self.reply(200, {"version": VERSION, "schema": STATE["schema"], "rows": STATE["rows"]})
        if self.path == "/":
            return self.reply(200, {"app": "heavy-init", "version": VERSION})
        return self.reply(404, {"error": "not found"})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return None


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = prepare()
    conn.close()
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()


if __name__ == "__main__":
    main()
