"""The only code that owns sockets and timers: asyncio DHCP and TFTP endpoints, the HTTP server."""
