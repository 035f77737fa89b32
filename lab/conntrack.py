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

import json

from lab.net import run, sh

LEAK_TABLE = "natgw_leak"  # nft table of count_leaks


def iptables_rules(own: str, seen_by_peer: str, dev: str) -> list[list[str]]:
    """NETMAP of a gateway's own cluster: SNAT out of the peer device, DNAT back in.
    The same rules for iptables and ip6tables (the prefixes say which)."""
    return [
        ["-t", "nat", "-A", "POSTROUTING", "-o", dev, "-s", own, "-j", "NETMAP",
         "--to", seen_by_peer],
        ["-t", "nat", "-A", "PREROUTING", "-i", dev, "-d", seen_by_peer, "-j", "NETMAP",
         "--to", own],
    ]


def nftables_ruleset(own: str, seen_by_peer: str, dev: str, table: str) -> str:
    """The same with nftables prefix NAT, in Liqo's form (maps of prefixes); an `ip`
    table for IPv4 prefixes, an `ip6` one for IPv6."""
    fam = "ip6" if ":" in own else "ip"
    dnat = f"dnat {fam} prefix to {fam} daddr map {{ {seen_by_peer} : {own} }}"
    snat = f"snat {fam} prefix to {fam} saddr map {{ {own} : {seen_by_peer} }}"
    return f"""table {fam} {table} {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{dev}" {fam} daddr {seen_by_peer} {dnat}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{dev}" {fam} saddr {own} {snat}
  }}
}}
"""


def conntrack_ruleset(table: str) -> str:
    """A Kubernetes node's forward path in nftables: conntrack on every forwarded
    packet of both families (kube-proxy's `-m conntrack --ctstate RELATED,ESTABLISHED
    -j ACCEPT`), nothing translated, nothing dropped."""
    return f"""table inet {table} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
  }}
}}
"""


def count_leaks(netns: str, devs: list[str], own: str) -> None:
    """Count packets leaving netns into `devs` with a source in `own` (untranslated: the
    real, overlapping addresses), after NAT (postrouting, priority 300: after srcnat)."""
    rules = "\n".join(f'    oifname "{dev}" ip saddr {own} counter' for dev in devs)
    run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=f"""table ip {LEAK_TABLE} {{
  chain post {{
    type filter hook postrouting priority 300; policy accept;
{rules}
  }}
}}
""")


def leaked(netns: str) -> int:
    """Packets count_leaks has counted."""
    out = json.loads(sh(netns, "nft", "-j", "list", "table", "ip", LEAK_TABLE))
    return sum(e["counter"]["packets"] for item in out["nftables"] if "rule" in item
               for e in item["rule"]["expr"] if "counter" in e)


def invalid(netns: str) -> int:
    """Packets the netns's conntrack found invalid (all CPUs): e.g. a SYN-ACK or an echo
    reply of a flow it never saw, which it leaves untranslated."""
    lines = sh(netns, "cat", "/proc/net/stat/nf_conntrack").split("\n")
    col = lines[0].split().index("invalid")
    return sum(int(line.split()[col], 16) for line in lines[1:] if line.strip())
