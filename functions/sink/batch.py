"""A batch of Kafka records and what it owns: its topic-partitions, their offset ranges, the
offsets to commit once it is stored and the positions to seek back to when it is not.

Like Quix Streams' ``SinkBatch``: triggers hand records in, the core stores partition by
partition, and the consumer loop asks the batch (not the core) what to commit or rewind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

__all__ = ["Batch", "SourceRecord", "TopicPartition", "rewind_positions"]


class SourceRecord(NamedTuple):
    """A Kafka record as any trigger receives it (a tuple: a sink makes one per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


TopicPartition = tuple[str, int]

_TOPIC_PARTITION = itemgetter(0, 1)  # of a SourceRecord


class Batch:
    """Records read together, grouped by topic-partition in the order read (a partition's
    records come in offset order, so the first and last of a group are its offset range)."""

    __slots__ = ("_grouped", "records")

    def __init__(self, records: Sequence[SourceRecord]) -> None:
        self.records = records
        # Grouped on first use: that is on the storing thread, not the one reading records.
        self._grouped: dict[TopicPartition, list[SourceRecord]] | None = None

    @property
    def _partitions(self) -> dict[TopicPartition, list[SourceRecord]]:
        if self._grouped is None:
            grouped: dict[TopicPartition, list[SourceRecord]] = {}
            # A consumer hands records out in runs of one partition: grouping whole runs keeps
            # the per-record work in C (per record in Python it was a fifth of the storing
            # thread).
            for topic_partition, run in groupby(self.records, _TOPIC_PARTITION):
                grouped.setdefault(topic_partition, []).extend(run)
            self._grouped = grouped
        return self._grouped

    def __len__(self) -> int:
        return len(self.records)

    def partitions(self) -> Iterator[tuple[TopicPartition, list[SourceRecord]]]:
        return iter(self._partitions.items())

    def offset_range(self, topic_partition: TopicPartition) -> tuple[int, int]:
        run = self._partitions[topic_partition]
        return run[0].offset, run[-1].offset

    def dedup_token(self, topic_partition: TopicPartition) -> str:
        """Same records, same token: ClickHouse drops a repeated insert of an offset range."""
        topic, partition = topic_partition
        first, last = self.offset_range(topic_partition)
        return f"{topic}-{partition}-{first}-{last}"

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """What a consumer commits once the batch is stored: ``last offset + 1`` a partition."""
        return {tp: run[-1].offset + 1 for tp, run in self._partitions.items()}

    def rewind_positions(self) -> dict[TopicPartition, int]:
        """Where a consumer seeks to read the batch again: its first offset a partition."""
        return {tp: run[0].offset for tp, run in self._partitions.items()}


def rewind_positions(batches: Iterable[Batch]) -> dict[TopicPartition, int]:
    """Where to seek to read all of ``batches`` again (in the order read): the earliest first
    offset of each partition."""
    positions: dict[TopicPartition, int] = {}
    for batch in batches:
        for tp, first in batch.rewind_positions().items():
            positions[tp] = min(first, positions.get(tp, first))
    return positions
