"""notes: the fixture web app of ccci's test bed (a Python HTTP server on PostgreSQL).

First start is slow the way real apps are: it creates the schema, seeds SEED_ROWS notes,
builds an index and writes attachment files. Later versions migrate the schema in place.
"""

import hashlib
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

VERSION = 1
DATA_DIR = os.environ.get("DATA_DIR", "/srv/data")
ATTACHMENTS = os.path.join(DATA_DIR, "attachments")
APP_UID = 1000  # the app's files belong to its own user, as in real images


def log(*parts):
    print(f"notes v{VERSION}:", *parts, flush=True)


def connect():
    with open(os.environ["DB_PASSWORD_FILE"]) as handle:
        password = handle.read().strip()
    deadline = time.monotonic() + 180
    while True:
        try:
            conn = psycopg2.connect(host=os.environ["DB_HOST"], dbname=os.environ["DB_NAME"],
                                    user=os.environ["DB_USER"], password=password, connect_timeout=3)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            log("waiting for the database:", str(exc).strip().splitlines()[0])
            time.sleep(1)


def schema_version(cur):
    cur.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
    cur.execute("SELECT value FROM meta WHERE key = 'schema'")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def set_schema(cur, version):
    cur.execute("INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO UPDATE SET value = %s",
                (str(version), str(version)))


def write_attachment(note_id, text):
    path = os.path.join(ATTACHMENTS, f"{note_id:06d}.txt")
    with open(path, "w") as handle:
        handle.write(text)
    os.chown(path, APP_UID, APP_UID)


def create_and_seed(cur):
    rows = int(os.environ.get("SEED_ROWS") or 150000)
    log(f"first start: creating the schema and seeding {rows} notes")
    started = time.monotonic()
    cur.execute("""CREATE TABLE notes (
        id serial PRIMARY KEY, title text NOT NULL, body text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""")
    cur.execute("""INSERT INTO notes (title, body)
        SELECT 'note ' || g, repeat(md5(g::text), 12) FROM generate_series(1, %s) AS g""", (rows,))
    cur.execute("CREATE INDEX notes_title ON notes (title)")
    cur.execute("CREATE INDEX notes_body_prefix ON notes (left(body, 64))")
    cur.execute("ANALYZE notes")
    os.makedirs(ATTACHMENTS, exist_ok=True)
    os.chown(DATA_DIR, APP_UID, APP_UID)
    os.chown(ATTACHMENTS, APP_UID, APP_UID)
    for note_id in range(1, 301):
        write_attachment(note_id, f"attachment of note {note_id}\n" * 20)
    set_schema(cur, 1)
    log(f"seeded in {time.monotonic() - started:.1f} s")


def migrate(cur):
    version = schema_version(cur)
    if version == 0:
        create_and_seed(cur)
        version = 1
    if version > VERSION:
        raise SystemExit(f"database schema {version} is newer than this app (v{VERSION})")
    return version


def stats(cur):
    cur.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM notes")
    count, body_bytes = cur.fetchone()
    files = sorted(os.listdir(ATTACHMENTS)) if os.path.isdir(ATTACHMENTS) else []
    digest = hashlib.sha256()
    for name in files:
        with open(os.path.join(ATTACHMENTS, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    return {"version": VERSION, "schema": schema_version(cur), "notes": count,
            "body_bytes": int(body_bytes), "attachments": len(files),
            "attachments_sha256": digest.hexdigest()}


def health_facts(cur):
    """Cheap: the schema, one row, the attachments folder (no scan of every note)."""
    cur.execute("SELECT count(*) FROM (SELECT 1 FROM notes LIMIT 1) AS one")
    has_notes = cur.fetchone()[0] > 0
    files = os.listdir(ATTACHMENTS) if os.path.isdir(ATTACHMENTS) else []
    return {"version": VERSION, "schema": schema_version(cur), "notes": int(has_notes),
            "attachments": len(files)}


def healthy(cur):
    info = health_facts(cur)
    return info["schema"] == VERSION and info["notes"] > 0 and info["attachments"] >= 300, info


def serve(conn):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body, kind="text/plain"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with conn.cursor() as cur:
                if self.path == "/health":
                    ok, info = healthy(cur)
                    self._send(200 if ok else 500, json.dumps(info), "application/json")
                elif self.path == "/stats":
                    self._send(200, json.dumps(stats(cur)), "application/json")
                elif self.path == "/":
                    info = stats(cur)
                    self._send(200, f"notes v{VERSION}: {info['notes']} notes\n")
                else:
                    self._send(404, "not found\n")

        def log_message(self, *args):
            return

    log("listening on :8080")
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()


def main():
    # PID 1 gets no default SIGTERM handling: stop promptly when swarm asks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = connect()
    with conn.cursor() as cur:
        version = migrate(cur)
        log(f"schema {version}")
    serve(conn)


if __name__ == "__main__":
    sys.exit(main())
