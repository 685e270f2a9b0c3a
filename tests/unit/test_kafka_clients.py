"""The Kafka clients run at the speed the benchmarks measured."""

from kafka.record import _crc32c, util


def test_kafka_python_checksums_record_batches_in_c():
    # without the crc32c package kafka-python silently falls back to a pure-Python CRC-32C, which cost the producer
    # three quarters of its CPU (bench/stream_bench.py: 47k against 200-240k events/s) and every consumer of
    # kafka-python (the refresher, the lag probe) a check of each fetched batch in Python
    assert util._crc32c is not _crc32c.crc
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
