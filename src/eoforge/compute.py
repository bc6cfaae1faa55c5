"""One way to scale out: the ``compute`` config section handed to Dask by every stage that parallelises.

``compute.scheduler`` (a ``tcp://host:8786`` address) connects to a running ``dask.distributed`` cluster;
``compute.workers`` starts a ``LocalCluster`` of that many single-threaded worker processes; neither runs the
tasks in this process (Dask's local scheduler: threads for the chips tasks, a reader thread for prepare), which
is also what the tests compare against.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from eoforge.config import ComputeConfig
from eoforge.errors import InputError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(cfg: ComputeConfig | None) -> Iterator[Client | None]:
    """A ``dask.distributed`` client for ``cfg``, or ``None`` to run in-process.

    Stages call ``client.compute``/``client.map`` when a client is given and ``dask.compute(...,
    scheduler="synchronous")`` (or a plain loop) otherwise.
    """
    if cfg is None or (cfg.scheduler is None and cfg.workers is None):
        yield None
        return
    from distributed import Client, LocalCluster

    if cfg.scheduler is not None:
        try:
            client = Client(cfg.scheduler, timeout=cfg.connect_timeout)
        except OSError as exc:
            raise InputError(
                f"{cfg.scheduler}: cannot reach the Dask scheduler ({exc}); start it or fix compute.scheduler"
            ) from None
        try:
            log.info("dask: connected to %s (dashboard %s)", cfg.scheduler, client.dashboard_link)
            yield client
        finally:
            client.close()
        return
    with (
        LocalCluster(
            n_workers=cfg.workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("dask: local cluster of %d workers (dashboard %s)", cfg.workers, client.dashboard_link)
        yield client


def worker_threads(client: Client | None) -> int:
    """Tasks the cluster runs at once (the sum of its workers' threads); 1 in-process."""
    if client is None:
        return 1
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def tasks_per_call(items: int, most: int, client: Client | None, per_thread: int = 2) -> int:
    """Items per Dask task: ``most`` in-process (fewest fixed costs), and on a cluster small enough that every
    thread gets about ``per_thread`` tasks (so the last task does not leave the other workers idle)."""
    if client is None:
        return most
    return max(1, min(most, items // (per_thread * worker_threads(client))))
