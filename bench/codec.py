"""
Codec benchmark: parse + build-response operations per second on one core,
for a typical KDMQ request (a node-list request captured from Kamailio 5.6.3).

Two yardsticks are measured in the same run, so that the figures can be judged
on a noisy machine: a minimal hand parser that checks almost nothing, and the
parse-only rate of Twisted's old ``twisted.protocols.sip.MessagesParser``.

Each figure is the best of many short rounds of CPU (process) time; the rounds
of the different measurements are interleaved, so that a burst of load on the
machine hits all of them alike.

Usage: ``python bench/codec.py [--rounds N] [--seconds S] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmq.sip import make_response, parse_message  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURE = os.path.join(HERE, "data", "req-KDMQ-notification_peer.sip")


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


def dmq_parse(data: bytes) -> object:
    """Parse with the dmq codec only."""
    return parse_message(data)


def twisted_parser() -> Optional[Callable[[bytes], object]]:
    """
    A parse-only function over Twisted's ``MessagesParser``, used the way
    ``twisted.protocols.sip.Base.datagramReceived`` uses it (one parser fed
    one datagram at a time), or ``None`` when Twisted is not installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from twisted.protocols import sip as twisted_sip
        except ImportError:
            return None
    received: list[object] = []
    parser = twisted_sip.MessagesParser(received.append)

    def parse(data: bytes) -> object:
        parser.dataReceived(data)
        parser.dataDone()
        return received.pop()

    return parse


def _round(func: Callable[[bytes], object], data: bytes, seconds: float, batch: int) -> float:
    """Operations per CPU second over one round of at least ``seconds``."""
    clock = time.process_time
    done = 0
    start = clock()
    while True:
        for _ in range(batch):
            func(data)
        done += batch
        elapsed = clock() - start
        if elapsed >= seconds:
            return done / elapsed


def measure(
    funcs: dict[str, Callable[[bytes], object]], data: bytes, rounds: int, seconds: float
) -> dict[str, float]:
    """Best operations per CPU second of each function over interleaved rounds."""
    for func in funcs.values():
        func(data)  # warm up, and fail early
    best = dict.fromkeys(funcs, 0.0)
    for _ in range(rounds):
        for name, func in funcs.items():
            best[name] = max(best[name], _round(func, data, seconds, 200))
    return best


def main() -> dict[str, float]:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per measurement (default 20)")
    parser.add_argument("--seconds", type=float, default=0.2, help="CPU seconds a round (default 0.2)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    data = load_request()
    funcs: dict[str, Callable[[bytes], object]] = {
        "dmq_ops_per_s": dmq_parse_respond,
        "parse_only_ops_per_s": dmq_parse,
        "minimal_ops_per_s": minimal_parse_respond,
    }
    twisted = twisted_parser()
    if twisted is not None:
        funcs["twisted_parse_only_ops_per_s"] = twisted
    results = measure(funcs, data, args.rounds, args.seconds)
    results["ratio_to_minimal"] = results["dmq_ops_per_s"] / results["minimal_ops_per_s"]
    if twisted is not None:
        results["parse_ratio_to_twisted"] = results["parse_only_ops_per_s"] / results["twisted_parse_only_ops_per_s"]
    if args.json:
        print(json.dumps(results))
    else:
        print(f"dmq parse + build-response : {results['dmq_ops_per_s']:10,.0f} ops/s")
        print(f"dmq parse only             : {results['parse_only_ops_per_s']:10,.0f} ops/s")
        print(f"minimal hand parser + resp : {results['minimal_ops_per_s']:10,.0f} ops/s")
        if twisted is not None:
            print(f"twisted MessagesParser     : {results['twisted_parse_only_ops_per_s']:10,.0f} ops/s (parse only)")
        print(f"ratio dmq / minimal        : {results['ratio_to_minimal']:10.2f}")
        if twisted is not None:
            print(f"ratio dmq / twisted (parse): {results['parse_ratio_to_twisted']:10.2f}")
    return results


if __name__ == "__main__":
    main()
