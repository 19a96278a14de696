"""One run at a time on a label field: a lease stored in the database, with its holders' host, pid and heartbeat.

    with RunLease(dataset, "veteran") as lease:   # RunLeaseError if another live run holds the field
        ...                                       # lease.check() between writes: LeaseLostError if taken over

A lease belongs to a run id, not to a process: worker processes that pass the same `run_id` share it (a run
sharded over several workers), each one a holder with its own heartbeat. Another run id is refused while any
holder is alive. A holder is dead when its heartbeat is older than `timeout` seconds, or at once when it ran on
this host and its process is gone (a run killed here is taken over by the next run without waiting). Heartbeats
are the database server's clock, so hosts with skewed clocks agree. A background thread renews this holder's
heartbeat every `HEARTBEAT_SECONDS`; a holder that finds its lease taken over stops before its next write. The
workers of a sharded run read each other's liveness here (`live_holders`) to take over a dead worker's chunks
(`sharding.py`); the last one out clears its dead peers' entries and deletes the lease.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from pymongo.errors import DuplicateKeyError

COLLECTION = "sam_veteran_leases"
HEARTBEAT_SECONDS = 15.0
TIMEOUT_SECONDS = 120.0  # a heartbeat older than this marks its holder dead


class RunLeaseError(RuntimeError):
    """Another run, alive, holds the label field."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (its heartbeat stopped for longer than the timeout)."""


def describe(dataset, label_field: str) -> dict | None:
    """The run holding `label_field` now: its id and each holder's host, pid, heartbeat age and liveness."""
    current = _collection().find_one({"_id": f"{dataset._doc.id}/{label_field}"})
    if current is None:
        return None
    now = _server_time()
    return {"run_id": current["run_id"], "holders": [
        {"host": h["host"], "pid": h["pid"], "heartbeat_age_s": round((now - h["heartbeat"]).total_seconds(), 1),
         "alive": _alive(h, now, TIMEOUT_SECONDS)} for h in current["holders"].values()]}


def _collection():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[COLLECTION]


def _server_time():
    import fiftyone.core.odm as foo

    return foo.get_db_conn().command("hello")["localTime"]


def process_gone(host: str, pid: int) -> bool:
    """True only when `host` is this machine and no process `pid` runs on it (another host's cannot be seen)."""
    if host != socket.gethostname():
        return False
    if pid <= 0:  # no process has it (and os.kill would address a process group)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user: it exists
        pass
    return False


def _alive(holder: dict, now, timeout: float) -> bool:
    if process_gone(holder["host"], holder["pid"]):
        return False
    return (now - holder["heartbeat"]).total_seconds() <= timeout


class RunLease:
    """The lease of `run_id` (a fresh one unless given) on `label_field` of `dataset`, for this process."""

    def __init__(self, dataset, label_field: str, run_id: str | None = None, timeout: float = TIMEOUT_SECONDS):
        self.key = f"{dataset._doc.id}/{label_field}"
        self.what = f"label field {label_field!r} of {dataset.name!r}"
        self.run_id = run_id or uuid.uuid4().hex
        self.timeout = timeout
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}".replace(".", "_")
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Hold the field for this run (joining its other workers), taking it over from dead holders only."""
        leases = _collection()
        for _ in range(10):  # each pass either succeeds or saw another process change the lease
            try:
                leases.insert_one({"_id": self.key, "run_id": self.run_id, "holders": {}})
            except DuplicateKeyError:
                pass
            current = leases.find_one({"_id": self.key})
            if current is None:
                continue
            if current["run_id"] != self.run_id:
                now = _server_time()
                alive = [h for h in current["holders"].values() if _alive(h, now, self.timeout)]
                if alive:
                    holder = alive[0]
                    age = (now - holder["heartbeat"]).total_seconds()
                    raise RunLeaseError(
                        f"another run is writing {self.what}: process {holder['pid']} on {holder['host']} (heartbeat "
                        f"{age:.0f} s ago). Two runs on one field would interleave their labels: wait for it, use "
                        f"another label_field, or, if that process is gone, rerun after {self.timeout:.0f} s without "
                        "a heartbeat")
                taken = leases.update_one({"_id": self.key, "run_id": current["run_id"],
                                           "holders": current["holders"]},
                                          {"$set": {"run_id": self.run_id, "holders": {}}})
                if not taken.modified_count:
                    continue
            joined = leases.update_one({"_id": self.key, "run_id": self.run_id},
                                       {"$set": {f"holders.{self.holder}.host": socket.gethostname(),
                                                 f"holders.{self.holder}.pid": os.getpid()},
                                        "$currentDate": {f"holders.{self.holder}.heartbeat": True}})
            if joined.matched_count:
                self._thread = threading.Thread(target=self._beat, name="sam-veteran-lease", daemon=True)
                self._thread.start()
                return
        raise RunLeaseError(f"could not take the lease of {self.what}: other runs kept changing it")

    def live_holders(self) -> set[str]:
        """The holders of this run that are alive now (this one included while it beats)."""
        current = _collection().find_one({"_id": self.key, "run_id": self.run_id}) or {"holders": {}}
        now = _server_time()
        return {name for name, holder in current["holders"].items() if _alive(holder, now, self.timeout)}

    def check(self) -> None:
        """Raise `LeaseLostError` if another run took the field over since the last heartbeat."""
        if self._lost.is_set():
            raise LeaseLostError(f"this run's lease of {self.what} was taken over by another run (no heartbeat for "
                                 f"{self.timeout:.0f} s); stopping before writing more")

    def release(self) -> None:
        """Leave the lease and clear the entries of this run's dead workers; the last holder out deletes it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        leases = _collection()
        leases.update_one({"_id": self.key, "run_id": self.run_id}, {"$unset": {f"holders.{self.holder}": ""}})
        current = leases.find_one({"_id": self.key, "run_id": self.run_id}) or {"holders": {}}
        dead = set(current["holders"]) - self.live_holders()
        if dead:
            leases.update_one({"_id": self.key, "run_id": self.run_id},
                              {"$unset": {f"holders.{name}": "" for name in dead}})
        leases.delete_one({"_id": self.key, "run_id": self.run_id, "holders": {}})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            renewed = _collection().update_one(
                {"_id": self.key, "run_id": self.run_id, f"holders.{self.holder}": {"$exists": True}},
                {"$currentDate": {f"holders.{self.holder}.heartbeat": True}})
            if not renewed.matched_count:
                self._lost.set()
                return
