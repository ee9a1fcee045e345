"""The floor for a first scan: imapclient + mail-parser, nothing else.

    python benchmarks/bare_fetch_parse.py --host H --port P --user U --password-file F \
        --ca-file CA [--folders INBOX,Sent] [--batch 200]

Logs in (STARTTLS, like the guard's benchmark configuration), and for each folder
EXAMINEs it, lists every UID (UID SEARCH ALL) and fetches ``BODY.PEEK[]`` in batches,
parsing each message with ``mailparser.parse_from_bytes`` and throwing the result away.
Prints one JSON object: messages, bytes and the seconds spent connecting, fetching and
parsing. Run as a subprocess by ``first_scan.py``, which also measures its wall time and
peak RSS from outside, exactly as for ``inbox-guard scan``.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--ca-file", type=Path, required=True)
    parser.add_argument("--folders", default="INBOX,Sent")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    logging.getLogger("mailparser").setLevel(logging.CRITICAL + 1)
    import mailparser
    from imapclient import IMAPClient

    imported = time.perf_counter()
    context = ssl.create_default_context(cafile=str(args.ca_file))
    client = IMAPClient(args.host, port=args.port, ssl=False, timeout=60)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.starttls(context)
    client.login(args.user, args.password_file.read_text().strip())
    connected = time.perf_counter()

    fetch_s = parse_s = 0.0
    count = size = 0
    for folder in args.folders.split(","):
        t0 = time.perf_counter()
        client.select_folder(folder, readonly=True)
        uids = sorted(int(u) for u in client.search("ALL"))
        fetch_s += time.perf_counter() - t0
        for start in range(0, len(uids), args.batch):
            t0 = time.perf_counter()
            got = client.fetch(uids[start : start + args.batch], [b"BODY.PEEK[]"])
            t1 = time.perf_counter()
            for item in got.values():
                raw = item[b"BODY[]"]
                size += len(raw)
                mailparser.parse_from_bytes(raw)
            count += len(got)
            fetch_s += t1 - t0
            parse_s += time.perf_counter() - t1
    client.logout()
    print(
        json.dumps(
            {
                "messages": count,
                "bytes": size,
                "import_s": round(imported - started, 4),
                "connect_s": round(connected - imported, 4),
                "fetch_s": round(fetch_s, 4),
                "parse_s": round(parse_s, 4),
                "total_s": round(time.perf_counter() - started, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
