"""Shared fixtures. Tests that need root, bpffs or network namespaces skip with a reason."""

from __future__ import annotations

import os

import pytest
from netns_util import netns_lab  # noqa: F401 - shared fixture


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (BPF, tc, network namespaces)")
    for item in items:
        if "netns" in item.keywords or "bpf" in item.keywords:
            item.add_marker(skip)
