"""Refresher replicas share the work by Kafka partition: each writes only its own users and items, and together
they write the item vectors and user states of one refresher (the user vectors composed from them equal a full
recompute), whatever their batching."""

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import RefresherMetrics
from streams.agents import partition_for
from tests.unit.test_refresher import (  # noqa: F401
    ENCODER,
    _assert_same,
    _feed,
    _full_recompute,
    _records,
    _refresher,
    _vectors,
    model,
)
from vectorstore.server import ServerStore
from workers.refresher import Ownership, Refresher
from workers.settings import KafkaSettings, RefresherSettings, Settings


class RecordingStore:
    """A real store, remembering which ids this client upserted (one per replica, all on one store)."""

    def __init__(self, store: ServerStore) -> None:
        self.store = store
        self.items: set[str] = set()
        self.users: set[str] = set()

    def upsert_items(self, points):
        self.items |= {p.item_id for p in points}
        self.store.upsert_items(points)

    def upsert_users(self, points):
        self.users |= {p.user_id for p in points}
        self.store.upsert_users(points)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("partitions, replicas", [(2, 2), (4, 3)])
def test_replicas_write_the_vectors_of_one_refresher_each_its_own_share(model, partitions, replicas):  # noqa: F811
    records = _records()
    alone = _refresher(model, per_batch=10**6)
    _feed(alone, records, [len(records)])
    want_items, want_users = _full_recompute(model, records)

    shared = ServerStore(":memory:")
    clients = [RecordingStore(shared) for _ in range(replicas)]
    sizes = [[1, 9, 40], [5, 23], [2, 70]]
    for replica, client in enumerate(clients):
        refresher = Refresher(client, model, ENCODER, RefresherMetrics.create(CollectorRegistry()),
                              RefresherSettings(dependents_per_batch=6),
                              ownership=Ownership(partitions, replicas, replica))
        _feed(refresher, records, sizes[replica])
        assert client.items and client.users
        assert all(partition_for(k, partitions) % replicas == replica for k in client.items | client.users)
    for a in range(replicas):
        for b in range(a + 1, replicas):
            assert not clients[a].items & clients[b].items and not clients[a].users & clients[b].users
    reader = _refresher(model, store=shared)
    reader.graph = alone.graph  # read back the keys the lone refresher wrote
    got_items, got_users = _vectors(reader, records)
    _assert_same(got_items, want_items)
    _assert_same(got_users, want_users)


def test_every_partition_has_exactly_one_owner():
    for partitions in (1, 4, 12):
        for replicas in range(1, partitions + 1):
            owners = [[r for r in range(replicas) if Ownership(partitions, replicas, r).partition(p)]
                      for p in range(partitions)]
            assert all(len(o) == 1 for o in owners)


def test_impossible_replica_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="replica 2 of 2"):
        Ownership(4, 2, 2)
    with pytest.raises(ValueError, match="refresher.replica=3 must be below refresher.replicas=2"):
        RefresherSettings(replicas=2, replica=3)
    with pytest.raises(ValueError, match="refresher.replicas=5 exceeds kafka.partitions=4"):
        Settings(kafka=KafkaSettings(partitions=4), refresher=RefresherSettings(replicas=5))
