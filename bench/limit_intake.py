"""The limit `nbwss notify` is measured against: the least a correct intake must do.

    python bench/limit_intake.py DB [JSON]    # JSON: one JOB's data; else JSON lines on stdin

Parse each notification, check its object and required fields, insert every one in one
transaction (WAL, synchronous=NORMAL, as the store), then send the wake datagram. Run as
its own process by `bench/limits.py`, with the same interpreter as `nbwss notify`.
"""

import json
import socket
import sqlite3
import sys
import time
from contextlib import suppress

FIELDS = {
    "JOB": ("scheduleType", "clientName", "status", "startTime", "state", "policyName",
            "parentJobId", "jobId", "policyType", "jobType"),
    "IMAGE": ("clientType", "clientName", "backupTime", "createdTime", "operationId", "backupId"),
}  # fmt: skip


def main(db: str, data: str | None) -> None:
    lines = [f'{{"object":"JOB","data":{data}}}'] if data is not None else sys.stdin
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    rows = []
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        obj, fields = record["object"], record["data"]
        if obj not in FIELDS or not isinstance(fields, dict) or not all(
            name in fields for name in FIELDS[obj]
        ):
            sys.exit(f"line {number}: not a notification")
        rows.append((obj, encode(fields)))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                 " object TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL)")
    now = time.time()
    with conn:
        conn.executemany("INSERT INTO outbox (object, data, created_at) VALUES (?, ?, ?)",
                         [(obj, text, now) for obj, text in rows])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wake, suppress(OSError):
        wake.sendto(b"w", db + ".wake")  # nobody listening is no error: the rows are in


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
