"""The one exception-to-response policy of every HTTP surface (core/web.py), on a bare app: 400
naming the field, the app's own statuses for its errors, 500 with an id that is in the log and no
traceback, and the body limit (413)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from core.errors import ConfigError, RlhfError
from core.web import BodyLimit, install_error_policy


class Item(BaseModel):
    name: str = Field(max_length=5)
    count: int


def render(path: str, status: int, message: str) -> dict:
    return {"error": message, "status": status}


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_policy(app, render, statuses={ConfigError: 422, RlhfError: 400})
    app.add_middleware(BodyLimit, max_bytes=64, render=render)

    @app.post("/items")
    def items(item: Item) -> dict:
        return {"ok": item.name}

    @app.get("/fail/{kind}")
    def fail(kind: str) -> dict:
        if kind == "http":
            raise HTTPException(409, "taken", headers={"X-Why": "taken"})
        if kind == "ours":
            raise ConfigError("bad setting")
        if kind == "root":
            raise RlhfError("ours, generally")
        if kind == "model":
            Item(name="too long a name", count=1)
        raise KeyError("a bug")

    return TestClient(app, raise_server_exceptions=False)


def test_a_bad_request_is_a_400_naming_each_field_without_echoing_it(client):
    r = client.post("/items", json={"name": "toolong", "count": "x"})
    assert r.status_code == 400
    assert r.json()["error"] == (
        "name: String should have at most 5 characters; "
        "count: Input should be a valid integer, unable to parse string as an integer"
    )
    assert client.post("/items", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert (
        client.post(
            "/items", content=b'{"name": "\\ud800", "count": 1}', headers={"content-type": "application/json"}
        ).status_code
        == 400
    )


def test_errors_keep_their_status_and_an_unexpected_one_is_a_500_with_a_logged_id(client, caplog):
    r = client.get("/fail/http")
    assert (r.status_code, r.json()["error"], r.headers["x-why"]) == (409, "taken", "taken")
    assert (client.get("/fail/ours").status_code, client.get("/fail/root").status_code) == (422, 400)
    assert client.get("/fail/model").json()["error"].startswith("name: ")
    with caplog.at_level("ERROR", logger="rlhf.http"):
        r = client.get("/fail/bug")
    assert r.status_code == 500 and "KeyError" not in r.text and "a bug" not in r.text
    error_id = r.json()["error"].split()[2].rstrip(":")
    (record,) = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert record.exc_info[0] is KeyError and "GET /fail/bug" in record.getMessage()


def test_a_body_over_the_limit_is_a_413(client):
    r = client.post("/items", json={"name": "x" * 100, "count": 1})
    assert r.status_code == 413 and r.json()["error"] == "request body: larger than this server's limit of 64 bytes"
