"""The DHCPv4 service: decoded requests in, replies out, over the boot policy and lease book.

- :mod:`.service`: :class:`~.service.DhcpService`, which answers a request by dispatching it;
- :mod:`.settings`: what it is configured with;
- :mod:`.authoritative`: RFC 2131 over the lease book and pools;
- :mod:`.bootp`: BOOTP clients (RFC 951);
- :mod:`.proxy`: proxyDHCP and the PXE boot server (PXE 2.1);
- :mod:`.reply`: reply assembly and the fit to the client's size;
- :mod:`.transaction`: the values a transaction is made of (outcome, reply, pending);
- :mod:`.log`: the transaction's line and ``--log-dhcp``'s detail;
- :mod:`.reservations`, :mod:`.limits`, :mod:`.shares`, :mod:`.watch`: reserved addresses,
  caps on new clients, the DHCP workers' shares, and other DHCP servers on the segment.

None of it owns a socket, a timer or a thread. Import from the modules themselves: this package
re-exports nothing.
"""
