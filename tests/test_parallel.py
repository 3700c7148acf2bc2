"""The bounded task runner under conversion, validate and verify (a real dask cluster)."""

from __future__ import annotations

import pytest

from s2cube.errors import S2CubeError
from s2cube.parallel import TasksFailed, in_flight, map_bounded

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _scale(shared, item):
    if item in shared.get("fail", ()):
        raise ValueError(f"item {item} is bad")
    return shared["factor"] * item


def test_results_come_back_in_item_order_with_the_shared_argument(client):
    items = list(range(57))
    assert map_bounded(client, _scale, {"factor": 3}, items) == [3 * i for i in items]


def test_the_scheduler_never_holds_more_than_the_bound(client):
    seen: list[int] = []

    def count(done, total):
        seen.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

    map_bounded(client, _scale, {"factor": 1}, list(range(200)), progress=count)
    assert len(seen) == 200
    # the tasks in flight and the scattered argument, never the 200 tasks at once
    assert max(seen) <= in_flight(client) + 1


def test_every_failure_is_listed_after_every_task_ran(client):
    with pytest.raises(TasksFailed) as e:
        map_bounded(client, _scale, {"factor": 1, "fail": {3, 17}}, list(range(30)),
                    what="patch location")
    assert isinstance(e.value, S2CubeError)
    assert len(e.value.failures) == 2
    assert "2 patch location(s) failed" in str(e.value)
    assert "item 3 is bad" in str(e.value) and "item 17 is bad" in str(e.value)


def test_stop_on_error_raises_the_task_own_exception(client):
    with pytest.raises(ValueError, match="item 5 is bad"):
        map_bounded(client, _scale, {"factor": 1, "fail": {5}}, list(range(30)),
                    stop_on_error=True)


def test_no_items_no_tasks(client):
    assert map_bounded(client, _scale, {"factor": 1}, []) == []
