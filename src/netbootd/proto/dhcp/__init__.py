"""DHCPv4 on the wire, pure: no sockets, no clock, no logging, no file access, no policy.

- :mod:`.codec`: packets and option values, bytes in and bytes out (RFC 2131, RFC 2132).
- :mod:`.size`: fitting a reply into the client's maximum message size (RFC 2132 §9.10).
- :mod:`.wire`: ports, addresses and where a reply goes (RFC 2131 §4.1), and what the socket
  edge reads from a datagram before it is decoded.

Import from the modules themselves: this package re-exports nothing.
"""
