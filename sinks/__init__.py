"""Where the stream lands: the ClickHouse writer, its DDL and queries, and the rep notifier."""
