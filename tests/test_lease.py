"""One run at a time on a label field: refused while another run's holder is alive, taken over once it is dead."""

import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from agent_data import box_then_click, make_dataset, scripted_policy
from sam_veteran.plugin import lease as lease_module
from sam_veteran.plugin.agent import Agent, AgentConfig
from sam_veteran.plugin.inference import iter_run_agent, run_agent
from sam_veteran.plugin.lease import LeaseLostError, RunLease, RunLeaseError
from sam_veteran.plugin.model import SamVeteranModel

GONE_PID = 2 ** 22 + 1  # above Linux's pid limit: no such process


@pytest.fixture
def dataset(tmp_path):
    ds = make_dataset(tmp_path, 4)
    yield ds
    ds.delete()


def model(segmenter):
    return SamVeteranModel(agent=Agent(scripted_policy(box_then_click), segmenter, AgentConfig(max_steps=3)))


def other_holder(dataset, field: str, host: str, pid: int, age_s: float) -> None:
    """The lease of another run, as that run's process (elsewhere or gone) left it in the database."""
    heartbeat = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=age_s)
    lease_module._collection().replace_one(
        {"_id": f"{dataset._doc.id}/{field}"},
        {"run_id": "other-run", "holders": {"h": {"host": host, "pid": pid, "heartbeat": heartbeat}}}, upsert=True)


def test_a_second_run_on_a_field_held_by_a_live_run_is_refused_and_other_fields_run(dataset, tiny_segmenter):
    other_holder(dataset, "veteran", "gpu-node-7", 4242, age_s=5)
    with pytest.raises(RunLeaseError, match="another run is writing label field 'veteran' .*process 4242 on "
                                            "gpu-node-7 \\(heartbeat \\d+ s ago\\)"):
        run_agent(dataset, policy="/nowhere/policy", segmenter="/nowhere/sam.pth")  # before any model loads
    assert not dataset.has_field("veteran_mask")
    assert run_agent(dataset, model(tiny_segmenter), label_field="other")["done"] == 4
    assert lease_module._collection().count_documents({"_id": f"{dataset._doc.id}/other"}) == 0  # released


@pytest.mark.parametrize("host,pid,age_s", [("gpu-node-7", 4242, 3600), (socket.gethostname(), GONE_PID, 1)])
def test_a_dead_holders_lease_is_taken_over(dataset, tiny_segmenter, host, pid, age_s):
    """Another host's holder after the timeout without a heartbeat; one of this host at once when its process is
    gone."""
    other_holder(dataset, "veteran", host, pid, age_s)
    assert run_agent(dataset, model(tiny_segmenter))["done"] == 4


def test_workers_of_one_run_share_its_lease_and_the_last_one_out_releases_it(dataset):
    first = RunLease(dataset, "veteran", run_id="sharded")
    second = RunLease(dataset, "veteran", run_id="sharded")
    with first, second:
        with pytest.raises(RunLeaseError):
            RunLease(dataset, "veteran").acquire()
        first.release()
        with pytest.raises(RunLeaseError):
            RunLease(dataset, "veteran").acquire()
    assert lease_module._collection().count_documents({"_id": f"{dataset._doc.id}/veteran"}) == 0
    with RunLease(dataset, "veteran"):
        pass


def test_a_run_whose_lease_was_taken_over_stops_before_writing(dataset, tiny_segmenter, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.05)
    runs = iter_run_agent(dataset, model(tiny_segmenter), batch_size=2)
    assert next(runs).done == 2
    other_holder(dataset, "veteran", "gpu-node-7", 4242, age_s=0)  # what a run taking over after a stall writes
    time.sleep(1)  # twenty heartbeats: the run's heartbeat thread has found its lease gone
    with pytest.raises(LeaseLostError, match="taken over by another run"):
        next(runs)
    assert dataset.exists("veteran_mask").count() == 2
