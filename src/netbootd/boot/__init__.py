"""Boot policy: who a client is and what it gets. Pure; returns frozen decisions."""
