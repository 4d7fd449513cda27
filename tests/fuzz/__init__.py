"""Hardening tests against a live ``twistd dmq`` node: the UDP mutation fuzzer, malformed requests, floods."""
