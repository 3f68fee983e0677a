import pytest

from registry.objects import LocalObjects, StorageError, open_objects


def test_create_writes_only_where_nothing_is(tmp_path):
    objects = LocalObjects(tmp_path)
    assert objects.create("a/b.json", b"first") and not objects.create("a/b.json", b"second")
    stored = objects.read("a/b.json")
    assert stored is not None and stored.data == b"first"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temporary file left behind


def test_replace_writes_only_over_what_was_read(tmp_path):
    objects = LocalObjects(tmp_path)
    objects.create("p.json", b"1")
    seen = objects.read("p.json")
    assert seen is not None
    assert objects.replace("p.json", b"2", seen.tag)
    assert not objects.replace("p.json", b"3", seen.tag)  # someone wrote since: the caller reads again
    assert not objects.replace("missing.json", b"x", seen.tag)
    now = objects.read("p.json")
    assert now is not None and now.data == b"2"


def test_locations(tmp_path):
    assert isinstance(open_objects(tmp_path), LocalObjects)
    assert open_objects(f"file://{tmp_path}/r").url == f"{tmp_path}/r"
    with pytest.raises(StorageError, match="only local paths, file:// and s3://"):
        open_objects("gs://bucket/registry")
