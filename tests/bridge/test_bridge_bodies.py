"""Malformed, oversize and odd bodies: always HTTP 200 with a 20001 reply, never a crash or a 5xx page."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def broker_url() -> str:
    return "memory://"  # refused before any broker is involved


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"{}",
        b'{"handler": "SystemHandler", "command": "ping"}',
        b'{"handler": "SystemHandler", "command": "ping", "data": [1]}',
        b'{"handler": 5, "command": "ping", "data": {}}',
        b'{"handler": "SystemHandler", "command": "ping", "data": {}, "timeout": -3}',
        b'{"handler": "SystemHandler", "command": "ping", "data": {}, "msg_id": "not-a-uuid"}',
        b"\xff\xfe garbage",
        b"[" * 5000 + b"]" * 5000,
        b'{"a": NaN}',
    ],
    ids=lambda b: b[:30].decode("utf-8", "replace"),
)
def test_a_malformed_body_is_answered_20001_with_http_200(bridge, body):
    response = bridge.http.post(bridge.url + "/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    reply = response.json()
    assert (reply["code"], reply["msg"]) == (20001, "无效的请求")
    assert reply["data"]["detail"]


def test_a_body_sent_without_any_content_type_is_still_read_as_json(bridge):
    body = b'{"handler": "SystemHandler", "command": "ping", "data": {}}'
    response = bridge.http.post(bridge.url + "/", content=body)
    assert "content-type" not in response.request.headers
    assert response.json()["code"] == 0 and response.json()["data"]["host"] == bridge.settings.host


def test_an_oversize_content_length_is_refused_before_the_body_is_read(bridge):
    limit = bridge.settings.max_body
    host, port = bridge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        # announce far more than the limit, send none of it: the answer must come anyway
        sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {limit * 100}\r\n\r\n".encode())
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in answer.lower()
    assert b'"code":20001' in answer


def test_an_oversize_chunked_body_is_refused_while_it_streams(bridge):
    limit = bridge.settings.max_body

    def chunks():
        yield b'{"handler": "SystemHandler", "command": "ping", "data": {"x": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    response = bridge.http.post(bridge.url + "/", content=chunks())
    assert response.status_code == 200
    assert response.json()["code"] == 20001
    assert "limit" in response.json()["data"]["detail"]


def test_an_invalid_host_name_is_refused_20001(bridge):
    reply = bridge.post({"handler": "SystemHandler", "command": "ping", "data": {}}, headers={"X-KVM-Host": "a b#"})
    assert reply.json()["code"] == 20001 and reply.json()["data"]["field"] == "host"


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
