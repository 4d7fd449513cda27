"""
dmq: Kamailio-compatible DMQ (distributed message queue) nodes for Twisted.
"""
