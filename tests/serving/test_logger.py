"""The prediction log without a server: spill on a failing table, replay, memory cap, redaction."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loopline.config import LogConfig
from loopline.errors import ServingError
from loopline.labels import LabelSpec
from loopline.serving.logger import Entry, PredictionLogger, Redactor
from loopline.serving.logrows import build_table
from loopline.serving.metrics import Metrics
from loopline.tables import DeltaStore


def _entry(i: int, rows: int = 1) -> Entry:
    return Entry(
        [f"r{i}-{k}" for k in range(rows)],
        1_700_000_000_000_000 + i,
        "prod.demo",
        "1",
        "invocations",
        1.0,
        np.full(rows, float(i)),
        {"x": np.full(rows, 0.5), "n": np.arange(rows, dtype=np.int64)},
        {"email": ["a@b"] * rows},
    )


class FlakyTable:
    def __init__(self, store: DeltaStore) -> None:
        self.store = store
        self.down = True

    def __call__(self, table: pa.Table) -> int:
        if self.down:
            raise OSError("object store unreachable")
        return self.store.append("inference_log", table)


def test_spill_then_replay_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALT", "s")
    store = DeltaStore(str(tmp_path / "tables"))
    table = FlakyTable(store)
    cfg = LogConfig(flush_rows=10, flush_interval=timedelta(seconds=60), redact={"email": "hash"}, salt_env="SALT")
    metrics = Metrics()

    async def scenario() -> None:
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", metrics, writer=table)
        await lg.start()
        for i in range(5):
            lg.record(_entry(i))
        await lg.flush()  # table down: spilled
        assert len(list((tmp_path / "spill").glob("*.arrow"))) == 1
        for i in range(5, 8):
            lg.record(_entry(i))
        await lg.flush()  # still down: second spill file, order kept
        assert len(list((tmp_path / "spill").glob("*.arrow"))) == 2
        await lg.close()

    asyncio.run(scenario())
    assert not store.exists("inference_log")
    table.down = False

    async def restart() -> None:  # the next start replays
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", metrics, writer=table)
        await lg.start()
        lg.record(_entry(8))
        await lg.close()

    asyncio.run(restart())
    t = store.read("inference_log")
    assert sorted(t.column("request_id").to_pylist()) == [f"r{i}-0" for i in range(9)]
    assert not list((tmp_path / "spill").glob("*.arrow*"))  # only the committer lock file is left
    assert "a@b" not in t.column("email").to_pylist()
    assert metrics.flush_failures._value.get() == 2


def test_memory_cap_spills(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    cfg = LogConfig(flush_rows=10_000, max_buffer_rows=50, flush_interval=timedelta(seconds=60))
    metrics = Metrics()

    async def scenario() -> None:
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", metrics)
        await lg.start()
        for i in range(12):
            lg.record(_entry(i, rows=10))
            assert lg.buffered_rows <= 50
        assert metrics.overflows._value.get() >= 1
        await lg.close()

    asyncio.run(scenario())
    assert store.read("inference_log").num_rows == 120


def test_hash_needs_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SALT", raising=False)
    with pytest.raises(ServingError, match=r"hashes \['email'\], but the salt variable NO_SUCH_SALT is not set"):
        Redactor({"email": "hash"}, "NO_SUCH_SALT")
    Redactor({"email": "drop"}, "NO_SUCH_SALT")  # dropping needs no salt


def test_log_is_compacted_every_n_commits(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "tables"))
    cfg = LogConfig(flush_rows=10_000, flush_interval=timedelta(seconds=60), compact_every=4)
    metrics = Metrics()

    async def scenario() -> None:
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", metrics)
        await lg.start()
        for i in range(10):  # ten flushes: compacted after the 4th and the 8th
            lg.record(_entry(i, rows=3))
            await lg.flush()
        await lg.close()

    asyncio.run(scenario())
    assert metrics.compactions._value.get() == 2
    assert store.info("inference_log").files == 3  # one compacted file + the two commits after the last compaction
    t = store.read("inference_log")
    assert sorted(t.column("request_id").to_pylist()) == sorted(f"r{i}-{k}" for i in range(10) for k in range(3))


def test_flush_builds_between_requests(tmp_path: Path) -> None:
    """The flush builds its table on the event loop one column at a time: other tasks (requests) run
    between the columns, not after the whole build; the rows are those of a one-shot build."""
    store = DeltaStore(str(tmp_path / "tables"))
    cfg = LogConfig(flush_rows=10_000, flush_interval=timedelta(seconds=60))
    steps: list[str] = []

    async def scenario() -> None:
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", Metrics())
        await lg.start()
        entries = [_entry(i, rows=1 + i % 3) for i in range(200)]

        async def requests() -> None:
            for _ in range(20):
                steps.append("request")
                await asyncio.sleep(0)

        serving = asyncio.ensure_future(requests())
        await asyncio.sleep(0)
        steps.append("build starts")
        built = await lg._build(entries)
        steps.append("build done")
        await serving
        assert built is not None
        assert built.equals(build_table(entries, "regression", lg.redactor))
        await lg.close()

    asyncio.run(scenario())
    during = steps[steps.index("build starts") + 1 : steps.index("build done")]
    assert during.count("request") >= 5, steps  # one per column: 8 base + x, n, email


def test_rows_being_flushed_are_still_known(tmp_path: Path) -> None:
    """Feedback asks ``buffered_ids`` whether a request id is known: rows taken from the buffer by a flush
    in progress still are, until they are staged or committed (then the folder or the table has them)."""
    store = DeltaStore(str(tmp_path / "tables"))
    cfg = LogConfig(flush_rows=10_000, flush_interval=timedelta(seconds=60))
    seen: list[set[str]] = []

    async def scenario() -> None:
        lg = PredictionLogger(store, cfg, "regression", tmp_path / "spill", Metrics())
        await lg.start()
        for i in range(50):
            lg.record(_entry(i))
        flush = asyncio.ensure_future(lg.flush())
        await asyncio.sleep(0)  # the flush took the buffer and is building its table
        assert lg.buffered_rows == 0
        seen.append(lg.buffered_ids({"r7-0", "nope"}))
        await flush
        seen.append(lg.buffered_ids({"r7-0"}))
        await lg.close()

    asyncio.run(scenario())
    assert seen == [{"r7-0"}, set()]
    assert "r7-0" in store.read("inference_log").column("request_id").to_pylist()


def _classifier_entry(i: int, spec: LabelSpec, labels: list[object], proba: list[list[float]]) -> Entry:
    p = np.asarray(proba)
    arr = np.asarray(labels, dtype=object if spec.kind == "str" else None)
    return Entry(
        [f"c{i}-{k}" for k in range(len(labels))],
        1_700_000_000_000_000 + i,
        "prod.demo",
        "1",
        "invocations",
        1.0,
        arr,
        {"x": np.full(len(labels), 0.5)},
        proba=p,
        probability=spec.score(arr, p),
        spec=spec,
    )


@pytest.mark.parametrize(
    ("kind", "classes", "arrow"),
    [("int", [1, 2, 5], pa.int64()), ("bool", [False, True], pa.bool_()), ("str", ["a b/c", "beta"], pa.string())],
)
def test_classifier_rows_are_typed(kind: str, classes: list[object], arrow: pa.DataType) -> None:
    """prediction in the label's type, probability float64, probabilities map<label, float64> (every class); the
    vectorized build of one model's rows and the entry-by-entry one (two versions in one flush) agree."""
    from loopline.labels import spec_for

    spec = spec_for("classification", kind, classes)  # type: ignore[arg-type]
    k = len(classes)
    rows = [np.roll(np.linspace(0.1, 1.0, k) / np.linspace(0.1, 1.0, k).sum(), i) for i in range(3)]
    labels = [classes[int(np.argmax(r))] for r in rows]
    entries = [_classifier_entry(0, spec, labels[:1], rows[:1]), _classifier_entry(1, spec, labels[1:], rows[1:])]
    table = build_table(entries, "classification", Redactor({}, "X"))
    assert table.schema.field("prediction").type == arrow
    assert table.schema.field("probability").type == pa.float64()
    assert table.schema.field("probabilities").type == pa.map_(arrow, pa.float64())
    assert table.column("prediction").to_pylist() == labels
    maps = [dict(m) for m in table.column("probabilities").to_pylist()]
    assert maps == [dict(zip(classes, r.tolist(), strict=True)) for r in rows]
    assert table.column("probability").to_pylist() == pytest.approx([max(r) if k > 2 else r[1] for r in rows])
    # another version of the same label type in the same flush (new classes): built entry by entry, same layout
    other = spec_for("classification", kind, classes)  # type: ignore[arg-type]
    mixed = build_table(
        [entries[0], _classifier_entry(2, other, labels[1:], rows[1:])], "classification", Redactor({}, "X")
    )
    assert mixed.schema == table.schema
    assert mixed.column("probabilities").to_pylist() == table.column("probabilities").to_pylist()


def test_classifier_rows_of_another_label_type_and_without_probabilities() -> None:
    """Versions of different label types in one flush: text (the table's misfit check sets the odd ones aside);
    requests without probabilities: null probability columns."""
    from loopline.labels import spec_for

    ints = spec_for("classification", "int", [0, 1])
    texts = spec_for("classification", "str", ["a", "b"])
    plain = Entry(["p-0"], 1, "prod.demo", "1", "invocations", 1.0, np.array([1]), {}, spec=ints)
    table = build_table(
        [_classifier_entry(0, ints, [1], [[0.3, 0.7]]), _classifier_entry(1, texts, ["a"], [[0.6, 0.4]]), plain],
        "classification",
        Redactor({}, "X"),
    )
    assert table.column("prediction").to_pylist() == ["1", "a", "1"]
    assert table.schema.field("probabilities").type == pa.map_(pa.string(), pa.float64())
    assert table.column("probabilities").to_pylist() == [[("0", 0.3), ("1", 0.7)], [("a", 0.6), ("b", 0.4)], None]
    assert table.column("probability").to_pylist() == [0.7, 0.4, None]
    only_plain = build_table([plain], "classification", Redactor({}, "X"))
    assert only_plain.schema.field("prediction").type == pa.int64()
    assert only_plain.column("probability").to_pylist() == [None]  # as in predictions: present, null
    assert only_plain.schema.field("probabilities").type == pa.map_(pa.int64(), pa.float64())


@pytest.mark.parametrize("kind", ["int", "bool", "str"])
def test_classifier_columns_are_the_predictions_layout(kind: str) -> None:
    """The log's prediction / probability / probabilities are what ``labels.output_arrays`` (batch's predictions
    table) gives for the same labels and probabilities."""
    from loopline.labels import output_arrays, spec_for

    classes = {"int": [1, 2, 5], "bool": [False, True], "str": ["a b/c", "beta", "gamma"]}[kind]
    spec = spec_for("classification", kind, classes)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(len(classes)), size=12)
    labels = spec.decide(proba)
    entries = [_classifier_entry(i, spec, labels[i : i + 3].tolist(), proba[i : i + 3].tolist()) for i in (0, 3, 6, 9)]
    table = build_table(entries, "classification", Redactor({}, "X"))
    want = output_arrays(spec, labels, proba)
    for name in ("prediction", "probability", "probabilities"):
        assert table.column(name).combine_chunks().equals(want[name]), name
