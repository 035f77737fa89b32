"""Mutations of valid cluster.yaml files, reproducible from (template, seed).

Structural mutations work on the parsed mapping (drop, duplicate, retype or
re-value a field anywhere in the tree); textual ones on the YAML text (flip,
insert, delete or truncate characters, repeat a line). Every case is a
function of its seed, so a failure names what to replay.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from natgw import keys

_PUB = [keys.pubkey(keys.genkey()) for _ in range(3)]


def templates(prefix: str, keyfile: Path, inline_key: str) -> list[dict]:
    """Valid files covering every kind of field (checked by the test)."""
    return [
        {"name": f"{prefix}a", "cidrs": ["10.244.0.0/16"], "privateKeyFile": str(keyfile),
         "engine": "wireguard-go", "mtu": 1420, "metrics": "127.0.0.1:9100",
         "peers": [{"name": "b", "publicKey": _PUB[0], "endpoint": "192.0.2.2:51820",
                    "listenPort": 51820, "persistentKeepalive": 25,
                    "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"},
                               {"cidr": "172.16.0.0/24"}],
                    "local": [{"cidr": "10.244.1.0/24", "as": "10.246.1.0/24"}]}]},
        {"name": f"{prefix}b", "cidrs": ["10.1.0.0/16", "fd00:1::/64"],
         "privateKey": inline_key, "engine": "wireguard-go",
         "peers": [{"name": "c", "publicKey": _PUB[1], "listenPort": 51821,
                    "remote": [{"cidr": "fd00:2::/64", "as": "fd00:3::/64"}]},
                   {"name": "d", "publicKey": _PUB[2], "endpoint": "[2001:db8::1]:51822",
                    "listenPort": 51822,
                    "remote": [{"cidr": "10.9.0.0/16", "as": "10.10.0.0/16"}]}]},
        {"name": f"{prefix}c", "cidrs": ["10.50.0.0/16"],
         "peers": [{"name": "lan", "interface": f"{prefix}v1", "via": "192.168.95.2",
                    "remote": [{"cidr": "10.50.0.0/16", "as": "10.51.0.0/16"}]}]},
    ]


_VALUES = [None, True, 0, -1, 65536, 2**64, 1.5, "", " ", "x" * 300, [], {}, [1, 2], {"a": 1},
           "10.0.0.0/8", "10.0.0.1/8", "fd00::/8", "::/0", "0.0.0.0/0", "300.1.1.1/24",
           "10.0.0.0/33", "10.0.0.0", "host:1", "[::1]:0", "a:b:c", "../etc/passwd",
           "../../x", "a/b", "..", "-x", "wg0", "é", "\x00", "\u202e", "auto", "kernel",
           "wireguard-go", 1280, 1279, 51820, "AAAA", "=" * 44, _PUB[0], _PUB[0][:-2]]


def _paths(node, path=()) -> Iterator[tuple]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def mutate_data(data: dict, rnd: random.Random) -> dict:
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for _ in range(rnd.randint(1, 3)):
        paths = [p for p in _paths(data) if p]
        path = rnd.choice(paths)
        parent, last = _get(data, path[:-1]), path[-1]
        op = rnd.randrange(6)
        if op == 0:  # drop the field or element
            del parent[last]
        elif op == 1:  # another value, of any type
            parent[last] = rnd.choice(_VALUES)
        elif op == 2 and isinstance(parent, list):  # duplicate an element
            parent.append(yaml.safe_load(yaml.safe_dump(parent[last])))
        elif op == 3 and isinstance(parent, dict):  # an unknown or misspelled key
            parent[rnd.choice(["extra", str(last).upper(), f"{last}_", "as", "cidr"])] = \
                parent[last]
        elif op == 4 and isinstance(parent[last], str):  # nudge a string
            s = parent[last]
            i = rnd.randrange(len(s) + 1)
            parent[last] = s[:i] + rnd.choice("0123456789./:-_aZ ") + s[i + 1:]
        else:  # a value moved to another place in the tree
            other = _get(data, rnd.choice(paths))
            parent[last] = yaml.safe_load(yaml.safe_dump(other))
        if not isinstance(data, dict):
            break
    return data


def mutate_text(text: str, rnd: random.Random) -> str:
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(5)
        i = rnd.randrange(len(text) + 1)
        if op == 0:
            text = text[:i] + rnd.choice(":-[]{}&*!|>'\"#%@`,?\t\n ") + text[i:]
        elif op == 1:
            text = text[:i] + text[i + rnd.randint(1, 8):]
        elif op == 2:
            text = text[:i]
        elif op == 3:
            lines = text.splitlines(keepends=True)
            if lines:
                j = rnd.randrange(len(lines))
                lines.insert(j, lines[j])
                text = "".join(lines)
        else:
            text = text[:i] + chr(rnd.choice([0, 0xFEFF, 0x85, 0xE9, 0xFFFD, 0x1F600])) + text[i:]
    return text


@dataclass
class Case:
    seed: int
    template: int
    text: str


def cases(base: list[dict], n: int, seed: int = 0) -> Iterator[Case]:
    for i in range(n):
        rnd = random.Random(seed * 1_000_003 + i)
        t = rnd.randrange(len(base))
        if rnd.random() < 0.6:
            data = mutate_data(base[t], rnd)
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        else:
            text = mutate_text(yaml.safe_dump(base[t], sort_keys=False), rnd)
        yield Case(i, t, text)
