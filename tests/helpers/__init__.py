"""Helpers the test modules share: client packets, service fixtures, command-line parsing."""
