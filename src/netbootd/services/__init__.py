"""Application glue: decoded requests in, policy and store consulted, replies out. No sockets."""
