"""Consumer lag on the real tansu broker: its ListOffsets reads below what was produced, the fetch-based end
offset does not, and the lag probe reports what a group has not committed."""

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from monitoring.lag import KafkaLag, LagSource, true_end_offsets
from tests.conftest import free_port
from workers.stack import start_broker

pytestmark = pytest.mark.integration


def test_fetch_based_end_offsets_hold_on_tansu_where_list_offsets_does_not(tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = start_broker(bootstrap, tmp_path / "broker.log")
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("t", 2, 1)])
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, enable_idempotence=False, acks=1)
        produced = {0: 0, 1: 0}
        for partition, batches in ((0, (10, 5)), (1, (1, 7, 3))):
            for size in batches:  # each flush makes one record batch of `size` records
                futures = [producer.send("t", value=b"x", partition=partition) for _ in range(size)]
                producer.flush()
                produced[partition] = max(f.get(10).offset for f in futures) + 1
        producer.close()
        tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        reported = consumer.end_offsets(tps)
        ends = true_end_offsets(consumer, tps)
        consumer.close()
        assert {tp.partition: ends[tp] for tp in tps} == produced == {0: 15, 1: 11}
        # the guard: tansu's ListOffsets really is below (base offset of the last batch + 1)
        assert reported[tps[0]] < produced[0] and reported[tps[1]] < produced[1]

        group = KafkaConsumer(bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=False)
        group.assign(tps)
        group.commit({tps[0]: OffsetAndMetadata(15, "", -1), tps[1]: OffsetAndMetadata(4, "", -1)})
        group.close()
        probe = KafkaLag(bootstrap, [LagSource("c", "g", ("t",)), LagSource("new", "never", ("t",))], cache_s=0)
        lag = {(r.consumer, r.partition): r.lag for r in probe.measure()}
        assert lag == {("c", 0): 0, ("c", 1): 7, ("new", 0): 15, ("new", 1): 11}

        # a second measurement by the same probe sees a new batch of 6 records on partition 0
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, enable_idempotence=False, acks=1)
        for _ in range(6):
            producer.send("t", value=b"y", partition=0)
        producer.close()
        lag = {(r.consumer, r.partition): r.lag for r in probe.measure()}
        assert lag == {("c", 0): 6, ("c", 1): 7, ("new", 0): 21, ("new", 1): 11}
        probe.close_clients()
    finally:
        broker.terminate()
        broker.wait(10)
