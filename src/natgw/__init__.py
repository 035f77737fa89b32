"""natgw: a NAT gateway for networks whose addresses collide."""

__version__ = "0.1.0"
