"""Row counts and per-table checksums, comparable between a source and a restored copy.

Every table has a monotonically increasing id, so "the rows up to id N" is the same set on a
source that kept taking writes and on a copy restored from an earlier point. A checksum is
the md5 of the ordered per-row md5s: cheap in memory, and sensitive to any changed row.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Iterable

from infra.data.storage import Store, StoreError, put_all

TABLES = ("users", "posts", "follows", "media")
MANIFEST = ".failover/checksums.json"  # in every reachable site's store, beside the media


def checksum_sql(table: str, upto: dict[str, int] | None = None) -> str:
    """The query for one table's row count, max id and checksum (of the rows with id <= upto[table])."""
    limit = (upto or {}).get(table)
    where = f"WHERE id <= {int(limit)}" if limit is not None else ""
    return (f"SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(md5(t::text), '' ORDER BY id), '')) "
            f"FROM {table} t {where}")


def all_tables_sql(upto: dict[str, int] | None = None) -> str:
    """One query for every table's `checksum_sql`, a row `table|rows|max_id|md5` each (one round trip)."""
    return " UNION ALL ".join(f"SELECT '{table}', * FROM ({checksum_sql(table, upto)}) AS s" for table in TABLES)


def parse_rows(output: str) -> dict[str, dict]:
    """`all_tables_sql`'s psql -At output as {table: {rows, max_id, md5}}."""
    result = {}
    for line in output.strip().splitlines():
        table, rows, max_id, digest = line.split("|")
        result[table] = {"rows": int(rows), "max_id": int(max_id), "md5": digest}
    return result


def checksums_of(site, db: str, upto: dict[str, int] | None = None, port: int | None = None) -> dict[str, dict]:
    """`checksums` through psql on the site's database host (Site.psql, over SSH): the operator
    is in no cloud's database firewall. `port`: another cluster on that host (a scratch restore)."""
    return parse_rows(site.psql(all_tables_sql(upto), db, port=port).stdout)


def max_ids(sums: dict[str, dict]) -> dict[str, int]:
    return {table: entry["max_id"] for table, entry in sums.items()}


def compare(restored: dict[str, dict], source: dict[str, dict]) -> dict[str, dict]:
    """Per table: do the restored rows up to the source's max id match the source exactly?"""
    return {
        table: {"match": restored[table]["md5"] == source[table]["md5"] and restored[table]["rows"] == source[table]["rows"],
                "restored_rows": restored[table]["rows"], "source_rows": source[table]["rows"],
                "upto": source[table]["max_id"]}
        for table in source
    }


def put_manifest(sums: dict[str, dict], stores: Iterable[Store], site: str) -> dict[str, dict]:
    """Records the checksums of the data a backup covers in every given store, so a restore can
    prove itself later even when the source is gone. Raises StoreError if no store took it."""
    manifest = {"site": site, "taken": datetime.now().astimezone().isoformat(), "tables": sums}
    copied, errors = put_all(stores, MANIFEST, json.dumps(manifest).encode())
    if errors and not copied:
        raise StoreError(f"the checksum manifest of {site} reached no store: {'; '.join(errors)}")
    return sums


def read_manifest(stores: Iterable[Store]) -> dict | None:
    """The checksum manifest from the first of `stores` that holds one and answers, else None."""
    for store in stores:
        try:
            return json.loads(store.get(MANIFEST))
        except (StoreError, ValueError):  # MissingKey is a StoreError
            continue
    return None
