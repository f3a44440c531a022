"""Kinesis after a restart: records put after the last checkpoint are found in the
stream and not put again (moto server, tests/plugins/kinesis.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from heliosdb_cdc._errors import ConfigError
from heliosdb_cdc.sinks import OutboundEvent, Outcome
from heliosdb_cdc.sinks._kinesis import KinesisSink
from tests.sink_contract import make_events
from tests.test_kinesis_sink import _dest, create_stream, read_stream

pytestmark = pytest.mark.kinesis


def _ids(endpoint: str, stream: str) -> Counter[str]:
    return Counter(orjson.loads(data)["event_id"] for _pk, data in read_stream(endpoint, stream))


async def _send(sink: KinesisSink, batch: Sequence[OutboundEvent]) -> None:
    results = await sink.send(batch)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * len(batch), results


class _MarkDuringSend:
    """Wraps the client: takes the sink's mark (for a cursor) during the n-th PutRecords call,
    as the dispatcher's checkpointer may while a send is in flight."""

    def __init__(self, inner: Any, sink_ref: list[KinesisSink], call: int, cursor: int) -> None:
        self.inner, self.sink_ref, self.call, self.cursor = inner, sink_ref, call, cursor
        self.calls = 0
        self.mark: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_records(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        resp: dict[str, Any] = await self.inner.put_records(**kw)
        if self.calls == self.call:
            self.mark = self.sink_ref[0].resume_mark(self.cursor)
        return resp


async def test_restart_skips_records_put_after_the_checkpoint(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint, shards=2)
    first, second = make_events(100, keys=7), make_events(400, keys=7, start=101)
    ref: list[KinesisSink] = []
    wrapper: list[_MarkDuringSend] = []

    def wrap(client: Any) -> _MarkDuringSend:
        wrapper.append(_MarkDuringSend(client, ref, call=3, cursor=100))
        return wrapper[0]

    # 7 keys: one PutRecords call holds one event per key, so the send of 400 makes ~58 calls;
    # the checkpointer takes the mark for cursor 100 during the third one
    sink = KinesisSink(_dest(kinesis_endpoint, stream), client_wrapper=wrap)
    ref.append(sink)
    await sink.start()
    await _send(sink, first)
    await _send(sink, second)
    mark = wrapper[0].mark
    assert mark is not None
    await sink.close()  # "kill -9": the cursor stays at 100

    again = KinesisSink(_dest(kinesis_endpoint, stream))
    await again.start()
    await again.recover(mark, horizon=500)
    await _send(again, second)  # the dispatcher resends from its checkpoint
    assert again.skipped_on_restart == 400
    await _send(again, make_events(20, keys=7, start=501))  # new events are put
    await again.close()

    ids = _ids(kinesis_endpoint, stream)
    assert len(ids) == 520
    assert [i for i, n in ids.items() if n > 1] == []


async def test_second_crash_during_the_resend_still_finds_the_first_runs_records(
    kinesis_endpoint: str,
) -> None:
    stream = create_stream(kinesis_endpoint, shards=2)
    batch = make_events(300, keys=11, start=1)
    first = KinesisSink(_dest(kinesis_endpoint, stream))
    await first.start()
    mark = first.resume_mark(0)
    assert mark is not None
    await _send(first, batch)
    await first.close()  # crash: cursor 0

    second = KinesisSink(_dest(kinesis_endpoint, stream))
    await second.start()
    await second.recover(mark, horizon=300)
    await _send(second, batch[:100])  # resend begins ...
    assert second.skipped_on_restart == 100
    mark2 = second.resume_mark(0)  # ... and the checkpoint at cursor 0 keeps the old mark
    assert mark2 == mark
    await second.close()  # crash again

    third = KinesisSink(_dest(kinesis_endpoint, stream))
    await third.start()
    assert mark2 is not None
    await third.recover(mark2, horizon=300)
    await _send(third, batch)
    assert third.skipped_on_restart == 300
    # once the cursor passed the horizon, marks move on again
    assert third.resume_mark(300) != mark
    await third.close()
    ids = _ids(kinesis_endpoint, stream)
    assert len(ids) == 300 and max(ids.values()) == 1


async def test_data_that_does_not_name_its_event_is_put_again(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint, shards=1)
    # a transformation that drops event_id: two events may then have the same bytes
    batch = [
        dataclasses.replace(ev, body=orjson.dumps({"id": ev.sequence % 3, "state": "x"}))
        for ev in make_events(30, keys=3)
    ]
    first = KinesisSink(_dest(kinesis_endpoint, stream))
    await first.start()
    mark = first.resume_mark(0)
    await _send(first, batch)
    await first.close()

    again = KinesisSink(_dest(kinesis_endpoint, stream))
    await again.start()
    await again.recover(mark, horizon=30)
    await _send(again, batch)
    await again.close()
    assert again.skipped_on_restart == 0
    assert len(read_stream(kinesis_endpoint, stream)) == 60


async def test_scan_bound_resends_the_rest_and_loses_nothing(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint, shards=1)
    batch = make_events(200, keys=13)
    first = KinesisSink(_dest(kinesis_endpoint, stream))
    await first.start()
    mark = first.resume_mark(0)
    await _send(first, batch)
    await first.close()

    again = KinesisSink(_dest(kinesis_endpoint, stream, restart_scan_max_records=50))
    await again.start()
    await again.recover(mark, horizon=200)
    await _send(again, batch)
    await again.close()
    assert again.skipped_on_restart == 50
    ids = _ids(kinesis_endpoint, stream)
    assert set(ids) == {ev.event_id for ev in batch}
    assert sum(ids.values()) == 350


async def test_restart_dedupe_off_resends(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint, shards=1)
    batch = make_events(40, keys=5)
    first = KinesisSink(_dest(kinesis_endpoint, stream, restart_dedupe="off"))
    await first.start()
    assert first.resume_mark(0) is None
    await _send(first, batch)
    await first.close()
    again = KinesisSink(_dest(kinesis_endpoint, stream, restart_dedupe=False))
    await again.start()
    await again.recover('{"v": 1, "t": 0, "shards": {}}', horizon=40)
    await _send(again, batch)
    await again.close()
    assert sum(_ids(kinesis_endpoint, stream).values()) == 80


async def test_a_bad_mark_is_ignored_with_a_warning(
    kinesis_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = create_stream(kinesis_endpoint, shards=1)
    sink = KinesisSink(_dest(kinesis_endpoint, stream))
    await sink.start()
    await sink.recover("not json", horizon=0)
    await _send(sink, make_events(3))
    await sink.close()
    assert "ignoring the stored resume mark" in caplog.text
    assert len(read_stream(kinesis_endpoint, stream)) == 3


@pytest.mark.parametrize(
    ("option", "value"),
    [("restart_dedupe", "maybe"), ("restart_scan_max_records", 0), ("restart_scan_timeout_s", "soon")],
)
def test_bad_option_names_itself(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option) as info:
        KinesisSink(_dest("http://127.0.0.1:1", "s", **{option: value}))
    assert info.value.context["key_path"] == f"destination.options.{option}"


async def test_unreachable_endpoint_during_recovery_is_a_sink_error() -> None:
    from heliosdb_cdc._errors import SinkError

    sink = KinesisSink(_dest("http://127.0.0.1:9", "s", timeout_s=1))
    await sink.start()  # does not raise: sends would RETRY
    with pytest.raises(SinkError, match="after a restart"):
        await asyncio.wait_for(sink.recover('{"v": 1, "t": 0, "shards": {}}', horizon=0), 30)
    await sink.close()


def test_mark_is_stored_with_the_checkpoint_and_dropped_with_the_stream(tmp_path: Any) -> None:
    from heliosdb_cdc.store import Store, sink_mark_key

    store = Store(tmp_path)
    store.create_stream("k", {"name": "k"}, "sql", "running")
    store.checkpoint("k", 7, [], {sink_mark_key("k"): '{"v": 1}'})
    assert store.get_cursor("k") == 7
    assert store.get_meta(sink_mark_key("k")) == '{"v": 1}'
    store.drop_stream("k")
    assert store.get_meta(sink_mark_key("k")) is None
    store.close()
