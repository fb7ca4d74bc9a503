"""DeployError carries its host and step as fields: callers that name the host already show
the reason alone, and the message reads as before."""

from __future__ import annotations

from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.transport import HostUnreachable


def test_the_message_names_host_and_step_and_the_reason_stands_alone() -> None:
    e = HostUnreachable("connection lost before `docker` finished", host="sbx-2")
    assert str(e) == "sbx-2: connection lost before `docker` finished"
    assert (e.host, e.reason) == ("sbx-2", "connection lost before `docker` finished")
    assert reason_for(e, "sbx-2") == "connection lost before `docker` finished"
    assert reason_for(e, "sbx-1") == str(e)  # another host's error keeps its name
    s = DeployError("exited 1", host="sbx-1", step="convert")
    assert str(s) == "sbx-1: convert: exited 1" and reason_for(s, "sbx-1") == str(s)
    assert str(DeployError("no host in it")) == "no host in it"
    assert reason_for(ValueError("plain"), "sbx-1") == "plain"
