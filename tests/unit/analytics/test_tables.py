"""One declaration per event table gives both its DDL and the Arrow schema the sink sends."""

from analytics.tables import EVENT_TABLES, FEEDBACK


def test_ddl_and_arrow_schema_come_from_the_same_columns():
    for table in EVENT_TABLES:
        ddl = table.ddl()
        assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS {table.name} (") and all(c.ddl in ddl for c in table.columns)
        # ClickHouse fills ingested_at itself: the sink sends every other column, ending with ts.
        assert table.schema.names == [c.name for c in table.columns if c.name != "ingested_at"] and table.schema.names[-1] == "ts"
        assert "ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)" in ddl


def test_only_nullable_columns_are_nullable_in_arrow():
    assert [f.name for f in FEEDBACK.schema if f.nullable] == ["rating"]


def test_tables_keyed_by_one_id_are_the_ones_the_sink_dedupes():
    assert {t.name: t.id_column for t in EVENT_TABLES if t.id_column} == {
        "interactions": "interaction_id",
        "feedback": "event_id",
        "exposures": "exposure_id",
        "erasures": "user_id",
    }
