"""Conntrack NAT, natgw's competitor: the rules by which a gateway NETMAPs its own cluster.

One place for both users: the benchmark's iptables and nftables modes
(bench.topology) and the harness's --conntrack gateways (lab.harness), which
show what conntrack does to asymmetric paths and failover.

Each gateway translates its *own* cluster: SNAT on the way out of the peer
device (POSTROUTING), DNAT on the way in (PREROUTING, before routing, which is
right since the destination is then local). A NETMAP of a prefix is a fixed
bijection, but conntrack applies it only to a flow's first packet in the
direction that created the entry, and to the rest of the flow through that
entry: the state lives in one gateway.
"""

from __future__ import annotations


def iptables_rules(own: str, seen_by_peer: str, dev: str) -> list[list[str]]:
    """NETMAP of a gateway's own cluster: SNAT out of the peer device, DNAT back in."""
    return [
        ["-t", "nat", "-A", "POSTROUTING", "-o", dev, "-s", own, "-j", "NETMAP",
         "--to", seen_by_peer],
        ["-t", "nat", "-A", "PREROUTING", "-i", dev, "-d", seen_by_peer, "-j", "NETMAP",
         "--to", own],
    ]


def nftables_ruleset(own: str, seen_by_peer: str, dev: str, table: str) -> str:
    """The same with nftables prefix NAT, in Liqo's form (maps of prefixes)."""
    dnat = f"dnat ip prefix to ip daddr map {{ {seen_by_peer} : {own} }}"
    snat = f"snat ip prefix to ip saddr map {{ {own} : {seen_by_peer} }}"
    return f"""table ip {table} {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{dev}" ip daddr {seen_by_peer} {dnat}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{dev}" ip saddr {own} {snat}
  }}
}}
"""
