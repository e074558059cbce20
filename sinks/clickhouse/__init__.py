"""ClickHouse through clickhouse-connect: embedded (chdb://) or a server (http(s)://)."""
