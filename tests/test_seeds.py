"""Seeds given by host name: resolved off the reactor, again before joins, when alone and every few intervals (fake resolver, task.Clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dmq.testing import FakeCluster


class FakeDNS:
    """A resolver whose answers the test changes; it counts lookups."""

    def __init__(self, **names: list[str]) -> None:
        self.names = names
        self.asked: list[str] = []

    def __call__(self, name: str) -> "Deferred[list[str]]":
        self.asked.append(name)
        return defer.succeed(list(self.names.get(name, [])))


def seeded(cluster: FakeCluster, dns: FakeDNS, port: int = 5090, **kw: Any) -> Any:
    """A node on 127.0.0.9:``port`` whose only seed is sip:seed.test:5070."""
    return cluster.add(port, seeds=["sip:seed.test:5070"], host="127.0.0.9", resolver=dns, **kw)


class SeedTests(SynchronousTestCase):
    """A seed that moves is followed, and the old address does not linger."""

    def test_name_seed_joins_the_address_it_resolves_to(self) -> None:
        """A seed given by name becomes the node of its address; the node joins it; the name itself is no node."""
        cluster = FakeCluster()
        cluster.add(5070, host="127.0.0.2")
        dns = FakeDNS(**{"seed.test": ["127.0.0.2"]})
        node = seeded(cluster, dns)
        cluster.run(0.1)
        self.assertEqual(dns.asked, ["seed.test"])
        self.assertEqual({(n.host, n.port, n.status.value) for n in node.nodes.others()}, {("127.0.0.2", 5070, "active")})
        self.assertTrue(node.ready)

    def test_seed_that_moves_is_followed(self) -> None:
        """When the name moves to a new address the node follows it, and the old address leaves the list after its timeouts."""
        cluster = FakeCluster()
        cluster.add(5070, host="127.0.0.2")
        dns = FakeDNS(**{"seed.test": ["127.0.0.2"]})
        node = seeded(cluster, dns, seed_refresh=2, t1=0.05)
        cluster.run(0.1)
        cluster.kill(5070)
        cluster.add(5070, host="127.0.0.3")
        dns.names["seed.test"] = ["127.0.0.3"]
        cluster.run(10.5, step=0.01)  # two ping intervals: one refresh
        hosts = {(n.host, n.seed) for n in node.nodes.others()}
        self.assertIn(("127.0.0.3", True), hosts)
        self.assertNotIn(("127.0.0.2", True), hosts)
        cluster.run(15, step=0.01)
        self.assertEqual({(n.host, n.port, n.status.value) for n in node.nodes.others()}, {("127.0.0.3", 5070, "active")})

    def test_alone_node_resolves_again(self) -> None:
        """A node whose seed does not answer resolves the name again on every join attempt, and joins once it points somewhere alive."""
        cluster = FakeCluster()
        dns = FakeDNS(**{"seed.test": ["127.0.0.4"]})
        node = seeded(cluster, dns, seed_refresh=0, t1=0.05)
        cluster.run(20, step=0.01)
        self.assertGreaterEqual(dns.asked.count("seed.test"), 2)
        self.assertFalse(node.ready)
        cluster.add(5070, host="127.0.0.5")
        dns.names["seed.test"] = ["127.0.0.5"]
        cluster.run(15, step=0.01)
        self.assertTrue(node.ready)
        self.assertIn(("127.0.0.5", 5070, "active"), {(n.host, n.port, n.status.value) for n in node.nodes.others()})

    def test_a_lookup_that_finds_nothing_keeps_the_seeds(self) -> None:
        """A name that resolves to nothing (a DNS outage) leaves the seeds as they were."""
        cluster = FakeCluster()
        cluster.add(5070, host="127.0.0.2")
        dns = FakeDNS(**{"seed.test": ["127.0.0.2"]})
        node = seeded(cluster, dns, seed_refresh=1)
        cluster.run(0.1)
        dns.names["seed.test"] = []
        cluster.run(11, step=0.01)
        self.assertEqual([(n.host, n.seed) for n in node.nodes.others()], [("127.0.0.2", True)])

    def test_multi_notify_takes_every_address(self) -> None:
        """With multi_notify every address of the name is a seed, at most 30."""
        cluster = FakeCluster()
        dns = FakeDNS(**{"seed.test": [f"127.0.1.{i}" for i in range(1, 41)]})
        node = seeded(cluster, dns, multi_notify=True)
        cluster.run(0.1)
        self.assertEqual(len(node.notification.seeds()), 30)

    def test_refreshes_every_few_intervals(self) -> None:
        """With seed_refresh=3 the name is looked up again every third ping interval (besides the first join)."""
        cluster = FakeCluster()
        cluster.add(5070, host="127.0.0.2")
        dns = FakeDNS(**{"seed.test": ["127.0.0.2"]})
        seeded(cluster, dns, seed_refresh=3)
        cluster.run(31, step=0.05)  # six ping intervals
        self.assertEqual(len(dns.asked), 1 + 2)


def test_lookup_addresses_srv_first_then_the_name() -> None:
    """With srv, the SRV targets' addresses come first, then the name's own, without repeats; without srv only the name's."""
    from dmq.resolve import lookup_addresses

    records = {("_x.test", "SRV"): ["10 5 5060 a.test.", "20 5 5060 b.test."]}
    hosts = {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2", "10.0.0.1"], "_x.test": ["10.0.0.3"]}

    def query(name: str, rdtype: str) -> list[str]:
        return records.get((name, rdtype), [])

    def addresses(name: str) -> list[str]:
        return hosts.get(name, [])

    assert lookup_addresses("_x.test", srv=True, query=query, addresses=addresses) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert lookup_addresses("_x.test", srv=False, query=query, addresses=addresses) == ["10.0.0.3"]


def test_system_addresses_read_the_hosts_file() -> None:
    """The system resolver answers localhost from /etc/hosts, and a name that does not exist with nothing."""
    from dmq.resolve import system_addresses

    assert "127.0.0.1" in system_addresses("localhost")
    assert system_addresses("no-such-name.invalid") == []
