"""
TLS settings of a node: its certificate and key, the CA its peers' certificates
must chain to, and which side checks which certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["TLSSettings"]


@dataclass(frozen=True)
class TLSSettings:
    """
    TLS configuration.

    :ivar certificate: PEM file with this node's certificate (and chain).
    :ivar private_key: PEM file with its private key (may be the same file).
    :ivar ca: PEM file of the CA(s) that peers' certificates must chain to;
        ``None`` uses the platform's trust store for outbound connections.
    :ivar verify_client: require and verify a client certificate on inbound
        connections (mutual TLS).
    :ivar verify_server: verify the server's certificate and name (host name
        or IP address) on outbound connections.
    """

    certificate: str
    private_key: str
    ca: Optional[str] = None
    verify_client: bool = False
    verify_server: bool = True

    def _load(self) -> tuple[Any, Any]:
        from twisted.internet import ssl

        with open(self.certificate, "rb") as f:
            cert_pem = f.read()
        with open(self.private_key, "rb") as f:
            key_pem = f.read()
        private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        ca = None
        if self.ca:
            with open(self.ca, "rb") as f:
                ca = ssl.Certificate.loadPEM(f.read())
        return private, ca

    def server_options(self) -> Any:
        """The context factory for the TLS listener."""
        private, ca = self._load()
        if self.verify_client:
            if ca is None:
                raise ValueError("verify_client needs a CA file")
            return private.options(ca)
        return private.options()

    def client_options(self, host: str) -> Any:
        """The client TLS options for a connection to ``host``."""
        from twisted.internet import ssl

        private, ca = self._load()
        if not self.verify_server:
            return private.options()
        return ssl.optionsForClientTLS(
            host,
            trustRoot=ca if ca is not None else ssl.platformTrust(),
            clientCertificate=private,
        )
