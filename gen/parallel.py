"""Expensive evaluations in parallel on Dask distributed: a ``LocalCluster`` on this machine by
default, or the scheduler of a cluster the user names (``tcp://HOST:PORT``), with the same code.

Used for what takes minutes per item: synthesis and place-and-route of calibration points
(``scripts/calibrate.py``) and of search candidates (``amaformer search --validate``). The cheap
model evaluations of the search itself stay in-process.

Why Dask distributed: its ``Client`` takes a ``LocalCluster`` or a remote scheduler address
interchangeably, so a sweep outgrows one machine by passing an address; futures come back as
they finish (``as_completed``), which drives a progress display; and a worker that dies takes
only its task with it.
"""

__all__ = ["open_client", "map_parallel"]


def open_client(scheduler=None, *, workers=None, processes=True, threads_per_worker=1):
    """A ``distributed.Client``: on ``scheduler`` (an address such as ``tcp://host:8786``), or
    on a new ``LocalCluster`` of ``workers`` workers (default: the machine's cores, at most 2;
    the yowasp tools are single-threaded, one build per worker).

    ``processes=False`` runs the workers as threads of this process (tests; tasks that hold the
    GIL then run one at a time). Close the returned client (``with`` block) when done; a local
    cluster closes with it.
    """
    import logging
    import os

    from distributed import Client, LocalCluster
    if scheduler:
        return Client(scheduler)
    n = workers or max(1, min(2, os.cpu_count() or 1))
    # silence_logs: the cluster's own chatter (e.g. the nanny killing a worker that still holds
    # torch's threads at shutdown) would interleave with the command's output
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                           processes=processes, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client._amaformer_cluster = cluster          # closed with the client, see map_parallel
    return client


def map_parallel(func, items, *, scheduler=None, workers=None, processes=True, client=None,
                 on_result=None):
    """``[func(item) for item in items]`` on Dask workers, in ``items`` order.

    Parameters
    ----------
    func : callable
        A picklable (module-level) function of one argument.
    items : list
    scheduler, workers, processes
        As :func:`open_client` (ignored when ``client`` is given).
    client : distributed.Client or None
        An open client to use (not closed here).
    on_result : callable or None
        ``on_result(index, result)`` as each item finishes (in completion order), e.g. to save
        partial results or advance a progress bar. An item that raises gives its exception
        object as the result (the others go on).
    """
    from distributed import as_completed
    items = list(items)
    if not items:
        return []
    own = client is None
    if own:
        client = open_client(scheduler, workers=workers, processes=processes)
    try:
        futures = client.map(func, items, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results = [None] * len(items)
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                res = fut.result()
            except Exception as e:              # noqa: BLE001 - reported per item
                res = e
            results[i] = res
            if on_result is not None:
                on_result(i, res)
        return results
    finally:
        if own:
            cluster = getattr(client, "_amaformer_cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
