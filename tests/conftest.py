"""Shared fixtures. Tests that need root, bpffs or network namespaces skip with a reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.netnslab import NetnsLab, netns_unavailable_reason


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (BPF, tc, network namespaces)")
    for item in items:
        if "netns" in item.keywords or "bpf" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A NetnsLab removed after the test; skips when netns cannot be used."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with NetnsLab() as lab:
        yield lab
