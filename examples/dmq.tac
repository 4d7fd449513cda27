"""
A DMQ node as a Twisted application file: ``twistd -ny examples/dmq.tac``.

It runs the notice-board peer of ``custom_peer.py`` and the control API, and
takes its settings from the environment:

- ``DMQ_SERVER_ADDRESS`` (default ``sip:127.0.0.1:5060``)
- ``DMQ_NOTIFICATION_ADDRESS`` (seeds, comma separated; default none)
- ``DMQ_PING_INTERVAL`` (seconds; default 60)
- ``DMQ_CONTROL`` (endpoint; default ``tcp:8060:interface=127.0.0.1``)

``twistd dmq`` does the same from options; a .tac is the place for an
application that adds its own services or peers around the node.
"""

import os
import sys

from twisted.application import service, strports

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from custom_peer import NoticeBoardPeer  # noqa: E402
from dmq import DMQService  # noqa: E402
from dmq.control import ControlAPI, make_site  # noqa: E402

application = service.Application("dmq")

node = DMQService(
    server_address=os.environ.get("DMQ_SERVER_ADDRESS", "sip:127.0.0.1:5060"),
    notification_addresses=[a for a in os.environ.get("DMQ_NOTIFICATION_ADDRESS", "").split(",") if a],
    ping_interval=int(os.environ.get("DMQ_PING_INTERVAL", "60")),
)
node.register_peer(NoticeBoardPeer())
node.setServiceParent(application)

control = strports.service(os.environ.get("DMQ_CONTROL", "tcp:8060:interface=127.0.0.1"), make_site(ControlAPI(node)))
control.setServiceParent(application)
