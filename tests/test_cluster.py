"""Redis Cluster: three real nodes on loopback, formed by the test itself.

Version keys share one hash tag, so each version operation is one atomic
script on one node; entries spread over the cluster.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import FromCache, QueryCache

from .conftest import StatementCounter
from .models import Category, Product
from .test_outage import _binary

SLOTS = 16384


def _free_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def cluster_url():
    import redis

    workdir = tempfile.mkdtemp()
    ports = [_free_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [_binary(), "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"{workdir}/nodes-{p}.conf", "--save", "",
             "--appendonly", "no", "--dir", workdir],  # fmt: skip
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        nodes = []
        for p in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = redis.Redis(host="127.0.0.1", port=p, socket_timeout=2)
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            nodes.append(client)
        step = SLOTS // 3
        for i, node in enumerate(nodes):  # each node owns a third of the slots
            last = SLOTS - 1 if i == 2 else (i + 1) * step - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for p in ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p)
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO")
                      for n in nodes):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def cluster_cache(cluster_url, sqlite_engine):
    from redis.cluster import RedisCluster

    region = make_region().configure("dogpile.cache.redis_cluster", expiration_time=600,
                                     arguments={"url": cluster_url})  # fmt: skip
    client = RedisCluster.from_url(cluster_url)
    client.flushall()
    cache = QueryCache(regions={"default": region}, versions=client, memo_size=0)
    maker = sessionmaker(sqlite_engine)
    cache.install(maker)
    yield cache, maker, client
    cache.uninstall()
    cache.versions.close()
    client.close()


def test_hits_and_invalidation_on_a_cluster(sqlite_engine, cluster_cache):
    _cache, maker, client = cluster_cache
    counter = StatementCounter(sqlite_engine)
    pages = [select(Product).where(Product.category_id == c).order_by(Product.id)
             .options(FromCache()) for c in (1, 2, 3, 4)]  # fmt: skip
    cats = select(Category).order_by(Category.id).options(FromCache())
    try:
        for stmt in (*pages, cats):
            with maker() as s:
                s.scalars(stmt).all()
        mark = counter.count
        for stmt in (*pages, cats):
            with maker() as s:
                s.scalars(stmt).all()
        assert counter.since(mark) == 0
        with maker() as s:
            s.get(Product, 5).name = "clustered"
            s.commit()
        with maker() as s:
            assert "clustered" in [p.name for p in s.scalars(pages[1])]
        mark = counter.count
        with maker() as s:
            s.scalars(cats).all()
        assert counter.since(mark) == 0  # category was not written
    finally:
        counter.close()
    version_keys = [k for k in client.keys(target_nodes=RedisCluster_all(client))
                    if k.startswith(b"{qc}")]  # fmt: skip
    assert version_keys
    assert len({client.keyslot(k) for k in version_keys}) == 1  # one slot: atomic scripts
    entry_keys = [k for k in client.keys(target_nodes=RedisCluster_all(client))
                  if k.startswith(b"qc:q:")]  # fmt: skip
    assert len(entry_keys) == 5
    owners = {client.get_node_from_key(k).port for k in entry_keys}
    assert len(owners) >= 2  # entries spread over the nodes


def RedisCluster_all(client):
    return client.ALL_NODES
