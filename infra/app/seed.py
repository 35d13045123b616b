"""Seeds the primary with users, posts, follows and media objects: about `megabytes` in all."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import psycopg

SCHEMA = Path(__file__).with_name("schema.sql")
MEDIA_SHARE = 0.2      # a fifth of the seed is media objects, the rest rows
MEDIA_OBJECT_BYTES = 256 * 1024
POST_BYTES = 600       # a post row with its body, on disk, roughly


def create_schema(dsn: str, site: str, epoch: int = 1) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.read_text())
        conn.execute("INSERT INTO failover.epoch (id, epoch, site) VALUES (1, %s, %s) ON CONFLICT (id) DO NOTHING",
                     (epoch, site))


def seed(dsn: str, media_dir: Path, megabytes: int) -> dict[str, int]:
    """Fills empty tables (idempotent: an already seeded database is left alone)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM users").fetchone()[0]:
            return _counts(conn)
        posts = max(100, int(megabytes * (1 - MEDIA_SHARE) * 1_000_000 / POST_BYTES))
        users = max(10, posts // 20)
        conn.execute("INSERT INTO users (name, bio) SELECT 'user' || g, md5(g::text) FROM generate_series(1, %s) g",
                     (users,))
        conn.execute(
            "INSERT INTO follows (follower, followee) SELECT 1 + (g * 7919) %% %s, 1 + (g * 104729) %% %s "
            "FROM generate_series(1::bigint, %s) g", (users, users, users * 5))
        conn.execute(
            "INSERT INTO posts (user_id, body) SELECT 1 + g %% %s, repeat(md5(g::text), 16) "
            "FROM generate_series(1::bigint, %s) g", (users, posts))
        objects = max(2, int(megabytes * MEDIA_SHARE * 1_000_000 / MEDIA_OBJECT_BYTES))
        for number in range(objects):
            key, size, digest = write_media(media_dir, f"seed/{number:06d}.bin", os.urandom(MEDIA_OBJECT_BYTES))
            conn.execute("INSERT INTO media (key, bytes, sha256) VALUES (%s, %s, %s)", (key, size, digest))
        conn.execute("ANALYZE")
        return _counts(conn)


def write_media(media_dir: Path, key: str, data: bytes) -> tuple[str, int, str]:
    """Stores an object in the bucket directory (atomically) and returns key, size, sha256.

    Files and folders take the bucket's owner, so the replicator (the service user) can
    later write beside them, whoever runs the app.
    """
    owner = media_dir.stat()
    path = media_dir / key
    for parent in reversed(path.relative_to(media_dir).parents[:-1]):
        folder = media_dir / parent
        if not folder.exists():
            folder.mkdir(exist_ok=True)
            os.chown(folder, owner.st_uid, owner.st_gid)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chown(tmp, owner.st_uid, owner.st_gid)
    tmp.replace(path)
    return key, len(data), hashlib.sha256(data).hexdigest()


def _counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("users", "posts", "follows", "media")}


def main(argv: list[str]) -> None:
    """`python3 -m infra.app.seed DSN MEDIA_DIR MEGABYTES SITE`: the epoch row and the seed, run on
    the primary's database host (the local cloud seeds its VM over SSH); prints the row counts."""
    dsn, media_dir, megabytes, site = argv
    create_schema(dsn, site)
    print(json.dumps(seed(dsn, Path(media_dir), int(megabytes))))


if __name__ == "__main__":
    main(sys.argv[1:])
