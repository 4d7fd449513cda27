"""The ``twistd dmq`` plugin: a Kamailio-compatible DMQ node (options in :mod:`dmq.tap`)."""

from twisted.application.service import ServiceMaker

dmq = ServiceMaker("dmq", "dmq.tap", "A Kamailio-compatible DMQ (distributed message queue) node.", "dmq")
