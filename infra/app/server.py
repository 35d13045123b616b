"""The reference social app: posts with media, and a /healthz that reports site, writability and epoch.

Run as `python -m infra.app.server CONFIG.json`. The config names the site, the database DSN,
its media remote, the listen address and the app's epoch. The app writes only when
its database is a primary whose stored epoch equals the app's own, and no peer site serves a
higher epoch: an old primary that comes back with its old config and database refuses writes
(409). Media objects are written through the site's own rclone crypt remote (`media_remote` in
`rclone_config`), so its bucket holds only ciphertext; with synchronous replication each is
also written into the warm sites' buckets (`media_mirrors`) before the post is acknowledged,
as its row is. The protector copies the bucket into every other one each second.
"""
from __future__ import annotations

import base64
import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

from playbooks import media


class AppConfig:
    """The app's config file, re-read when it changes (the runbook raises the epoch in it)."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime = 0.0
        self._data: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._data, self._mtime = json.loads(self.path.read_text()), mtime
            return self._data


class PeerWatch:
    """Watches the other sites' /healthz: a higher epoch anywhere means this site was superseded.

    This is what keeps an old primary that comes back with its old config and database from
    taking writes: its own database still agrees with its stale epoch, but the new primary
    serves a higher one. The first look happens before the app serves anything.
    """

    def __init__(self, config: AppConfig, interval: float = 1.0):
        self.config = config
        self.interval = interval
        self.highest = 0

    def look(self) -> None:
        for url in self.config.get().get("peers", []):
            try:
                with urllib.request.urlopen(url, timeout=0.5) as response:
                    self.highest = max(self.highest, int(json.load(response).get("epoch", 0)))
            except (OSError, ValueError):
                continue  # an unreachable peer proves nothing either way

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.look()

    def superseded(self) -> bool:
        return self.highest > self.config.get()["epoch"]


class Handler(BaseHTTPRequestHandler):
    config: AppConfig
    peers: PeerWatch
    local = threading.local()

    def log_message(self, fmt, *args):  # access logs would drown the drill's timeline
        pass

    def _db(self):
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.config.get()["dsn"], autocommit=True, connect_timeout=2)
            self.local.conn = conn
        return conn

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _guarded(self, action):
        try:
            return action()
        except psycopg.Error as error:
            self.local.conn = None
            self._send(503, {"error": f"database unavailable: {error.__class__.__name__}"})

    def _rejoining(self) -> bool:
        """While the rejoin agent makes this site's database follow the primary (infra/data/
        rejoin.py), nothing is served: its data may be stale."""
        if self.config.get().get("rejoining"):
            self._send(503, {"error": "not ready: this site is rejoining the active primary", "ready": False,
                             "site": self.config.get()["site"], "writable": False})
            return True
        return False

    def do_GET(self):
        if self._rejoining():
            return
        if self.path == "/healthz":
            return self._guarded(self._health)
        if self.path.startswith("/posts/"):
            return self._guarded(lambda: self._get_post(self.path.rsplit("/", 1)[1]))
        if self.path.startswith("/canary"):
            return self._guarded(self._canary)
        self._send(404, {"error": "not found"})

    def do_POST(self):
        if self._rejoining():
            return
        if self.path == "/posts":
            return self._guarded(self._create_post)
        self._send(404, {"error": "not found"})

    def _health(self):
        config = self.config.get()
        row = self._db().execute("SELECT pg_is_in_recovery(), (SELECT epoch FROM failover.epoch)").fetchone()
        recovery, db_epoch = row
        superseded = self.peers.superseded()
        writable = (not recovery) and db_epoch == config["epoch"] and not config.get("fenced") and not superseded
        self._send(200, {"site": config["site"], "writable": writable, "epoch": config["epoch"],
                         "db_epoch": db_epoch, "in_recovery": recovery, "superseded": superseded})

    def _create_post(self):
        config = self.config.get()
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if config.get("fenced") or self.peers.superseded():
            return self._send(409, {"error": "this site is fenced: another site holds a higher epoch",
                                    "epoch": config["epoch"]})
        media_key = None
        if request.get("media"):
            media_key = f"posts/{request.get('canary_seq') or 'x'}-{threading.get_ident()}.bin"
            data = base64.b64decode(request["media"])
            remotes = [config["media_remote"], *config.get("media_mirrors", [])]
            with ThreadPoolExecutor(max_workers=len(remotes)) as pool:  # each write is an rclone process
                failures = list(pool.map(lambda r: media.put(config["rclone_config"], f"{r}{media_key}", data), remotes))
            broken = [f"{remote} ({why})" for remote, why in zip(remotes, failures) if why]
            if broken:
                return self._send(503, {"error": f"media bucket unavailable: {', '.join(broken)}"})
        # The epoch check and the insert are one statement: no write slips past a raised epoch.
        row = self._db().execute(
            "INSERT INTO posts (user_id, body, media_key, canary_seq) "
            "SELECT %s, %s, %s, %s WHERE (SELECT epoch FROM failover.epoch) = %s RETURNING id",
            (request.get("user_id", 1), request.get("body", ""), media_key, request.get("canary_seq"), config["epoch"]),
        ).fetchone()
        if row is None:
            return self._send(409, {"error": "epoch mismatch: this site is not the current primary",
                                    "epoch": config["epoch"]})
        self._send(201, {"id": row[0], "site": config["site"], "media_key": media_key, "epoch": config["epoch"]})

    def _get_post(self, post_id: str):
        row = self._db().execute("SELECT id, user_id, body, media_key, canary_seq FROM posts WHERE id = %s",
                                 (int(post_id),)).fetchone()
        if row is None:
            return self._send(404, {"error": "no such post"})
        self._send(200, dict(zip(("id", "user_id", "body", "media_key", "canary_seq"), row)))

    def _canary(self):
        rows = self._db().execute("SELECT canary_seq, media_key FROM posts WHERE canary_seq IS NOT NULL").fetchall()
        self._send(200, {"seqs": [r[0] for r in rows], "media": {str(r[0]): r[1] for r in rows if r[1]}})


def main(argv: list[str]) -> None:
    config = AppConfig(Path(argv[1]))
    Handler.config = config
    Handler.peers = PeerWatch(config)
    Handler.peers.look()
    threading.Thread(target=Handler.peers.run, daemon=True).start()
    settings = config.get()
    server = ThreadingHTTPServer((settings["address"], settings["port"]), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
