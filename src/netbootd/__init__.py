"""netbootd: a network-boot server (DHCPv4, proxyDHCP, TFTP, HTTP) for PXE, UEFI and iPXE."""

__version__ = "0.1.0"
