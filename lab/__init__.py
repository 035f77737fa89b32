"""The lab: natgw's clusters in network namespaces, for the harness, the benchmark and tests.

Not part of the natgw package (the wheel ships none of it): run it from the
repository with the root on the module path (`python -m lab`, scripts/netns/).

    net.py       commands, namespaces, veths, addresses, run prefixes, ping, natgw
    keys.py      WireGuard key files, created 0600
    record.py    what a run made (namespaces, gateways, processes it started, e.g.
                 wireguard-go), saved as it is made; removes it all
    netnslab.py  NetnsLab: names under one prefix, removed in reverse order (tests)
    harness.py   the N-cluster topologies behind scripts/netns/ and the e2e tests
                 (with --replicas, several gateways per cluster over ECMP)
    conntrack.py conntrack NAT, the competitor: NETMAP rules (bench's iptables and
                 nftables modes, the harness's --conntrack), leak and invalid counters

The benchmark (bench/) builds its two-gateway modes with the same pieces.

Processes are ended with natgw.proc.end_process and NETMAP is natgw.netmap:
the lab computes and stops things exactly as the product does.
"""
