"""The project's own broker: what can be checked without starting it."""

from __future__ import annotations

from leadflow_tools.broker.local import _cluster_id


def test_kafka_cluster_ids_never_look_like_options() -> None:
    ids = {_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_free_port_never_repeats_within_a_process() -> None:
    from leadflow_tools.broker.local import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
