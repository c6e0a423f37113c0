"""Pure protocol codecs and state machines: no sockets, no clocks, no logging, no files."""
