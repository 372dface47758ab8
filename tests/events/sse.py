"""A Server-Sent Events reader over a real HTTP client (httpx), on a thread of its own."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class SseMessage:
    event: str = "message"
    id: str | None = None
    data: str = ""

    def json(self) -> dict:
        return json.loads(self.data)


@dataclass
class SseReader:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    messages: list[SseMessage] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    content_type: str = ""
    ended: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def start(self) -> SseReader:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.opened.wait(30), "the stream did not open"
        return self

    def _run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30, read=60)) as http,
                http.stream("GET", self.url + "/events", headers=self.headers, params=self.params) as response,
            ):
                self.status, self.content_type = response.status_code, response.headers.get("content-type", "")
                if response.status_code != 200:
                    response.read()
                    self.comments.append(response.text)
                    self.opened.set()
                    return
                message = SseMessage()
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        self.opened.set()
                    elif not line:
                        if message.data:
                            self.messages.append(message)
                        message = SseMessage()
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            message.data = f"{message.data}\n{value}" if message.data else value
                        elif name in ("event", "id"):
                            setattr(message, name, value)
        except BaseException as exc:
            self.error.append(exc)
        finally:
            self.opened.set()
            self.ended.set()

    def events(self) -> list[dict]:
        return [m.json() for m in self.messages if m.event == "message"]

    def wait_events(self, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < count and time.monotonic() < deadline and not self.ended.is_set():
            time.sleep(0.05)
        return self.events()
