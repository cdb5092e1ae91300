"""The soft stage cuts its rows into blocks itself (no Ray Data repartition task, which
starved when the actors asked for every CPU): every row once, in order, near-equal sizes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mtkd.soft.stage import _blocks


@pytest.mark.parametrize(("rows", "count"), [(0, 1), (0, 8), (1, 8), (7, 3), (64, 8),
                                             (65, 8), (1000, 24), (5, 5), (3, 100)])
def test_blocks_keep_every_row_in_order_with_near_equal_sizes(rows: int, count: int) -> None:
    table = pa.table({"uid": [f"u{i}" for i in range(rows)], "x": list(range(rows))})
    blocks = _blocks(table, count)
    assert len(blocks) == max(1, min(count, rows))
    assert pa.concat_tables(blocks)["x"].to_pylist() == list(range(rows))
    sizes = [b.num_rows for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    if rows:
        assert min(sizes) >= 1
