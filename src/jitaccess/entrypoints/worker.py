"""The worker loop: sleep until the next due item, wake early when told, handle what is due.

Nothing polls on a fixed interval. A commit that makes something due sooner wakes the loop:
in the same process through an Event, across processes through PostgreSQL LISTEN/NOTIFY.
A long safety sleep (JITACCESS_WORKER_MAX_SLEEP_SECONDS) only guards against a lost signal.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import timedelta

import psycopg
from sqlalchemy.exc import DBAPIError

from jitaccess.adapters.db.unit_of_work import NOTIFY_CHANNEL, PROCESS_TOKEN, parse_payload
from jitaccess.bootstrap import Container
from jitaccess.domain.errors import Unavailable
from jitaccess.services.reconcile import check_targets, reconcile
from jitaccess.services.run_due_work import WorkerOptions, WorkReport, run_due_work

log = logging.getLogger("jitaccess.worker")


def options_from(container: Container) -> WorkerOptions:
    s = container.settings
    return WorkerOptions(
        lease=timedelta(seconds=s.worker_lease_seconds),
        flag_after=timedelta(seconds=s.flag_after_seconds),
        retry_cap=s.retry_cap_seconds,
    )


class Worker:
    def __init__(self, container: Container) -> None:
        self.container = container
        self.options = options_from(container)
        self.stop = threading.Event()
        self.passes = 0
        self.last_report = WorkReport()
        self._executor = ThreadPoolExecutor(
            container.settings.worker_threads, thread_name_prefix="jit-connector"
        )
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self.run, "jit-worker")
        if self.container.engine.dialect.name == "postgresql":
            self._spawn(self._listen, "jit-listen")
        if self.jobs():
            self._spawn(self._run_jobs, "jit-jobs")

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def shutdown(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.container.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                report = self.run_once()
                # Planning the sleep reads the database too: a failure here must not end the
                # thread (the process would look alive and never expire anything again).
                idle = 0.0 if report.full else self.seconds_until_due()
                failures = 0
            except (Unavailable, DBAPIError) as error:
                failures += 1
                delay = min(5.0, 0.2 * 2**failures)
                log.warning(
                    "database unavailable (%s); retrying in %.1fs", type(error).__name__, delay
                )
                self.container.wake.wait(delay)
                continue
            except Exception:
                # Never let one bad pass stop every expiry: log it, back off, go on.
                log.exception("worker pass failed; retrying in 1s")
                self.container.wake.wait(1.0)
                continue
            if report.full:
                continue  # a whole batch: more is waiting right behind it
            if idle <= 0:
                continue
            log.debug("worker idle for up to %.3fs", idle)
            planned = self.container.clock.now() + timedelta(seconds=idle)
            self.container.wake.sleep_until(planned, idle)

    def run_once(self) -> WorkReport:
        report = run_due_work(
            self.container.uow,
            self.container.clock,
            self.container.connectors,
            self.container.box,
            self.options,
            self._executor,
        )
        self.passes += 1
        self.last_report = report
        for error in report.errors:
            log.warning("connector failure, will retry: %s", error)
        return report

    def seconds_until_due(self) -> float:
        with self.container.uow.readonly() as uow:
            due = uow.grants.next_due_at()
        cap = self.container.settings.worker_max_sleep_seconds
        if due is None:
            return cap
        wait = (due - self.container.clock.now()).total_seconds()
        return max(0.0, min(cap, wait + 0.001))

    # --- periodic jobs -------------------------------------------------------------------------
    def jobs(self) -> list[tuple[str, float, Callable[[], dict[str, object]]]]:
        s, c = self.container.settings, self.container

        def health() -> dict[str, object]:
            checked = check_targets(c.uow, c.clock, c.connectors)
            return {"targets": len(checked), "failing": [h.target for h in checked if not h.ok]}

        def drift() -> dict[str, object]:
            report = reconcile(c.uow, c.clock, c.connectors)
            return {
                "unexplained": report.unexplained,
                "removed": report.removed,
                "missing": report.missing,
                "failing": [t.target for t in report.targets if not t.ok],
            }

        every = [
            ("target-health", s.health_interval_seconds, health),
            ("reconcile", s.reconcile_interval_seconds, drift),
        ]
        return [job for job in every if job[1] > 0]

    def run_jobs_once(self) -> list[str]:
        """Run each periodic job this worker wins the claim for; the names of those run."""
        ran = []
        for name, interval, work in self.jobs():
            with self.container.uow() as uow:
                now = self.container.clock.now()
                won = uow.ops.claim_job(name, now, now + timedelta(seconds=interval))
                uow.commit()
            if not won:
                continue
            try:
                result = work()
            except Exception as error:
                log.exception("periodic job %s failed", name)
                result = {"error": f"{type(error).__name__}: {error}"[:500]}
            with self.container.uow() as uow:
                uow.ops.finish_job(name, result)
                uow.commit()
            ran.append(name)
        return ran

    def _run_jobs(self) -> None:
        shortest = min(interval for _, interval, _ in self.jobs())
        while not self.stop.is_set():
            try:
                self.run_jobs_once()
            except Exception:
                log.exception("periodic jobs failed; trying again later")
            self.stop.wait(min(5.0, shortest))

    def _listen(self) -> None:
        """Forward PostgreSQL notifications on the due channel to the wake event."""
        url = self.container.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while not self.stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.container.wake.set()  # we may have missed something while away
                    while not self.stop.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=1):
                            sender, due = parse_payload(note.payload)
                            if sender != PROCESS_TOKEN:  # ours already rang in-process
                                self.container.wake.ring(due)
            except psycopg.Error as error:
                log.warning("LISTEN connection lost (%s); reconnecting", type(error).__name__)
                time.sleep(1.0)


def run_worker(container: Container) -> None:
    """`jitaccess worker`: the loop alone, in the foreground, until interrupted."""
    worker = Worker(container)
    # SIGTERM (what process managers send) stops as gently as Ctrl-C: the pass in flight
    # finishes; anything claimed but not done comes back when its lease runs out.
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    worker.start()
    try:
        with suppress(KeyboardInterrupt):
            while not worker.stop.is_set():
                worker.stop.wait(1.0)
    finally:
        worker.shutdown()
