"""netbootd's log lines: ``events`` is their key=value format, ``buffer`` their way out (one
write per event-loop turn, compiled with the DHCP path), ``handler`` joins that to
:mod:`logging`."""
