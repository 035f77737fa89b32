"""The lab: natgw's clusters in network namespaces, for the harness, the benchmark and tests.

Not part of the natgw package (the wheel ships none of it): run it from the
repository with the root on the module path (`python -m lab`, scripts/netns/).

    net.py       commands, namespaces, veths, addresses, run prefixes, ping
    keys.py      WireGuard key files, created 0600
    procs.py     wireguard-go and other processes started in a namespace
    netnslab.py  NetnsLab: names under one prefix, removed in reverse order
    harness.py   the N-cluster topologies behind scripts/netns/ and the e2e tests

Processes are ended with natgw.proc.end_process and NETMAP is natgw.netmap:
the lab computes and stops things exactly as the product does.
"""
