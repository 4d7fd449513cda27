"""Fault tests with real processes: kill -9 and restart, datagram loss, partitions, seeds that move (docs/reliability.md)."""
