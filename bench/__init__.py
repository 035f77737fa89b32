"""The benchmark: natgw against conntrack NAT (iptables, nftables) and plain routing.

`python -m bench` (or `make bench`) builds the two-gateway topology in
network namespaces once per mode and transport, measures them in alternation
and reports medians, ratios and the targets. See BENCHMARKS.md.

    topology.py   namespaces, veths, NAT rules, wireguard-go, natgw configs
    traffic.py    UDP forwarding rate (udpgen.c), TCP bulk (iperf3), TCP RR
    control.py    natgw up cold, config changes under load, memory
    micro.py      natgw's programs alone with BPF_PROG_TEST_RUN
    stats.py      medians, ratios, targets (pure)    report.py  tables
    pipes.py      pipes against the L3 path through the same tunnel (`python -m bench.pipes`)
"""
