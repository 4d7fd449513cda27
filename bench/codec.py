"""
Codec benchmark: parse + build-response operations per second on one core,
for a typical KDMQ request (a node-list request captured from Kamailio 5.6.3).

A minimal hand parser that checks almost nothing is measured in the same run
as a yardstick, so the figure can be judged on a noisy machine.

Usage: ``python bench/codec.py [--seconds S] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmq.sip import make_response, parse_message  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURE = os.path.join(
    HERE, "data", "req-KDMQ-notification_peer.sip"
)


def load_request() -> bytes:
    """The captured Kamailio node-list request."""
    with open(CAPTURE, "rb") as f:
        return f.read()


def minimal_parse_respond(data: bytes) -> bytes:
    """A parser that checks almost nothing, and a response built from it."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, uri, version = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return (
        "SIP/2.0 200 OK\r\nVia: %s\r\nFrom: %s\r\nTo: %s;tag=x\r\nCall-ID: %s\r\n"
        "CSeq: %s\r\nContent-Length: 0\r\n\r\n"
        % (headers["via"], headers["from"], headers["to"], headers["call-id"], headers["cseq"])
    ).encode()


def dmq_parse_respond(data: bytes) -> bytes:
    """Parse with the dmq codec and build the 200 response bytes."""
    request = parse_message(data)
    return make_response(request, 200).to_bytes()  # type: ignore[arg-type]


def rate(func: Callable[[bytes], bytes], data: bytes, seconds: float) -> float:
    """Best operations per CPU second over several rounds of ``seconds``."""
    best = 0.0
    batch = 2000
    for _ in range(5):
        start = time.process_time()
        done = 0
        while True:
            for _ in range(batch):
                func(data)
            done += batch
            elapsed = time.process_time() - start
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def main() -> dict[str, float]:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = load_request()
    results = {
        "dmq_ops_per_s": rate(dmq_parse_respond, data, args.seconds),
        "minimal_ops_per_s": rate(minimal_parse_respond, data, args.seconds),
        "parse_only_ops_per_s": rate(parse_message, data, args.seconds),  # type: ignore[arg-type]
    }
    results["ratio_to_minimal"] = results["dmq_ops_per_s"] / results["minimal_ops_per_s"]
    if args.json:
        print(json.dumps(results))
    else:
        print(f"dmq parse + build-response : {results['dmq_ops_per_s']:10,.0f} ops/s")
        print(f"dmq parse only             : {results['parse_only_ops_per_s']:10,.0f} ops/s")
        print(f"minimal hand parser + resp : {results['minimal_ops_per_s']:10,.0f} ops/s")
        print(f"ratio dmq / minimal        : {results['ratio_to_minimal']:10.2f}")
    return results


if __name__ == "__main__":
    main()
