"""One writer of a shared SQLite database: N transactions, each on a new connection, with
random sleeps between them. Waits out SQLITE_BUSY as an application would; any other error
is printed and ends the run with status 1. Prints the number of commits.

Usage: sqlite_writer.py DB TAG COUNT JOURNAL_MODE [FIRST [LOG]]: rows (TAG, FIRST..COUNT-1);
with LOG, each row's number is appended to LOG once its commit has returned, so that a run
cut short can be checked and started again after the last one logged."""
import random
import sqlite3
import sys
import time

path, tag, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
first = int(sys.argv[5]) if len(sys.argv) > 5 else 0
log = open(sys.argv[6], "a", buffering=1) if len(sys.argv) > 6 else None
random.seed(f"{tag}-{first}")
committed = 0
for i in range(first, count):
    while True:
        try:
            db = sqlite3.connect(path, timeout=60)
            db.execute(f"PRAGMA journal_mode={mode}")
            db.execute("CREATE TABLE IF NOT EXISTS t(tag TEXT, i INT)")
            db.execute("INSERT INTO t VALUES(?, ?)", (tag, i))
            db.commit()
            db.close()
            committed += 1
            if log:
                log.write(f"{i}\n")
            break
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                time.sleep(0.01)
                continue
            print(f"{tag}: transaction {i}: {e}", file=sys.stderr)
            sys.exit(1)
    time.sleep(random.random() * 0.004)
print(committed)
