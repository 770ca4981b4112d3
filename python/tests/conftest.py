"""Fixtures: a real `cv up` node per test session, started on OS-chosen
ports in temp dirs; tests wait on its ready line and status calls, never on
sleeps."""

import uuid

import pytest

import curvine
from curvine.testing import Node


@pytest.fixture(scope="session")
def node():
    try:
        n = Node(extra_args=["--block-size", "1MiB"])
    except FileNotFoundError as e:
        pytest.exit(str(e), 2)
    yield n
    n.stop()


@pytest.fixture(scope="session")
def client(node):
    return curvine.connect(node.meta)


@pytest.fixture
def base(client):
    """A fresh directory per test: /t/<random>."""
    d = f"/t/{uuid.uuid4().hex[:12]}"
    client.mkdir(d, parents=True)
    return d


@pytest.fixture
def meta_env(node, monkeypatch):
    """CURVINE_META pointing at the test node, for APIs that connect by
    themselves (fsspec URLs, checkpoint, datasets)."""
    monkeypatch.setenv("CURVINE_META", node.meta)
    return node.meta
