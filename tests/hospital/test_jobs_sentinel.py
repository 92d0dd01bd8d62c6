"""`REDIS_SENTINELS`: how the setting is read and what client it gives (the failover itself is
tested on real processes in tests/chaos/test_redis_failover.py)."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from hospital.jobs import open_redis, parse_sentinels


def test_sentinels_are_host_port_pairs() -> None:
    assert parse_sentinels(" 10.0.0.1:26379, sentinel-b:26380 ,") == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert parse_sentinels("") == []
    for wrong in ("10.0.0.1", "host:port", ":26379"):
        with pytest.raises(ValueError, match="REDIS_SENTINELS"):
            parse_sentinels(wrong)


def test_with_sentinels_redis_url_gives_only_database_and_password() -> None:
    conn = open_redis("redis://:s%40cret@ignored-host:1/3", "127.0.0.1:26379", "clinic")
    pool = conn.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "clinic"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "s@cret"
    assert "host" not in pool.connection_kwargs or pool.connection_kwargs["host"] != "ignored-host"


def test_without_sentinels_the_url_is_used_as_it_is() -> None:
    conn = open_redis("redis://127.0.0.1:6390/2")
    assert conn.connection_pool.connection_kwargs["port"] == 6390
    with pytest.raises(ValueError):
        open_redis(None)
