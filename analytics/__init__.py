"""Analytics: A/B assignment and statistics, the ClickHouse schema and named SQL, the dashboard."""
