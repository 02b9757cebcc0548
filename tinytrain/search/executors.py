"""Where a search's tasks run: in-process, a local process pool, or a Ray cluster.

An executor runs independent calls of a module-level function and yields each result
with the position of its call as soon as it is done; the search aggregates results by
key and sorts them, so the completion order never changes the outcome (the same seed
gives the same chosen scheme on every executor). ``share`` hands a large argument (the
model, the features) to the executor once: Ray puts it in its object store and passes
the reference to every task; the local executors pass the object itself.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from tinytrain.errors import UsageError

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str
    workers: int

    def share(self, obj: Any) -> Any: ...

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs every call in this process, in order (``jobs=1``)."""

    name = "local"
    workers = 1

    def share(self, obj: Any) -> Any:
        return obj

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        for i, args in enumerate(calls):
            yield i, fn(*args)

    def close(self) -> None:
        pass


class LocalExecutor:
    """A pool of ``jobs`` worker processes (spawned: no state inherited from the driver)."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def share(self, obj: Any) -> Any:
        return obj

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        futures: dict[Future[Any], int] = {self._pool.submit(fn, *args): i for i, args in enumerate(calls)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: futures[f]):
                    yield futures[f], f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Each call is an independent Ray task (one CPU); the driver only aggregates.

    Uses the Ray instance this process is connected to, else connects to ``address``
    (``auto``, ``ray://host:10001``, ...) or starts a local one with ``jobs`` CPUs."""

    name = "ray"

    def __init__(self, jobs: int | None, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'tinytrain[ray]' (or pip install ray)") from None
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = jobs or os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if jobs is not None:
            self.workers = min(self.workers, jobs)
        self._remote: dict[Callable[..., Any], Any] = {}

    def share(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1, max_retries=1)(fn)
        # At most ``workers`` tasks in flight, so that ``jobs`` caps the parallelism.
        refs: dict[Any, int] = {}
        todo = list(enumerate(calls))
        todo.reverse()
        try:
            while todo or refs:
                while todo and len(refs) < self.workers:
                    i, args = todo.pop()
                    refs[remote.remote(*args)] = i
                done, _ = self._ray.wait(list(refs), num_returns=1)
                for ref in done:
                    yield refs.pop(ref), self._ray.get(ref)
        finally:
            for ref in refs:
                self._ray.cancel(ref)

    def close(self) -> None:
        pass  # the Ray instance belongs to the process (ray.shutdown() ends it)


def make_executor(kind: str, jobs: int | None = None, address: str | None = None) -> Executor:
    if kind not in EXECUTORS:
        raise UsageError(f"unknown executor {kind!r} (one of {', '.join(EXECUTORS)})")
    if jobs is not None and jobs < 1:
        raise UsageError(f"jobs must be at least 1, got {jobs}")
    if kind == "ray":
        return RayExecutor(jobs, address)
    if address:
        raise UsageError("--ray-address needs --executor ray")
    n = jobs if jobs is not None else min(2, os.cpu_count() or 1)
    return InlineExecutor() if n == 1 else LocalExecutor(n)
