"""Durable state (leases) behind small async interfaces."""
