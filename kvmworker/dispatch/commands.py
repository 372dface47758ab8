"""How a handler declares its commands: a decorator that only attaches metadata.

A handler is a plain class with a ``name`` and one method per command::

    class SystemHandler:
        name = "SystemHandler"

        @command(PingData)
        def ping(self, data: PingData, ctx: Context) -> dict: ...

The decorated method stays an ordinary callable; ``HandlerRegistry`` finds it by its metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import UnknownCommand, UnknownHandler

_MARK = "__kvm_command__"


class NoData(BaseModel):
    """For commands that take no parameters (unknown keys are ignored, as legacy callers send extras)."""

    model_config = ConfigDict(extra="ignore")


ResourceOf = Callable[[Any], str | None]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    model: type[BaseModel]
    resource: ResourceOf | None
    invalid_code: Code | None
    mutates: bool
    idempotent: bool
    inline: bool
    cancellable: bool = False

    @property
    def safe_to_rerun(self) -> bool:
        """May run again after a crash cut it short: it reads only, or converges when repeated."""
        return self.idempotent or not self.mutates


def command(
    model: type[BaseModel] = NoData,
    *,
    resource: ResourceOf | None = None,
    invalid_code: Code | None = None,
    mutates: bool = True,
    idempotent: bool = False,
    inline: bool = False,
    cancellable: bool = False,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a handler method as a command.

    ``resource`` maps the validated data to a key: commands with the same key run one after another.
    ``invalid_code`` overrides the handler's code for data that fails validation.
    ``mutates=False`` marks read-only commands (their dry run is the real thing).
    ``idempotent=True`` promises that running it again converges to the same state and reply: after a
    worker crash cut it short, the redelivered message runs it again instead of answering -1.
    ``inline=True`` runs it on the consumer thread, never queued behind the pool: only for commands that
    cannot block (memory and the local journal only), such as ``ping``, which must answer even when every
    pool thread is busy.
    ``cancellable=True`` promises that, once running, it watches ``ctx.cancelled`` (or ``ctx.on_cancel``) and,
    when ``SystemHandler.cancel`` asks, stops as soon as it safely can, leaves the host as it was before it and
    raises ``Cancelled`` (30013). Any queued command can be dropped before it starts; only these once running.
    """
    if cancellable and inline:
        raise ValueError("a cancellable command runs on the pool: cancel itself runs inline and must get in")

    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = CommandSpec(name or fn.__name__, model, resource, invalid_code, mutates, idempotent, inline, cancellable)
        setattr(fn, _MARK, spec)
        return fn

    return attach


@dataclass(frozen=True)
class BoundCommand:
    handler: str
    spec: CommandSpec
    call: Callable[[BaseModel, Any], Any]
    invalid_code: Code

    @property
    def name(self) -> str:
        return self.spec.name


class HandlerRegistry:
    """Handlers by name and their commands by name; duplicate registrations are refused."""

    def __init__(self, handlers: Iterable[object] = ()):
        self._commands: dict[str, dict[str, BoundCommand]] = {}
        self.handlers: list[object] = []
        for handler in handlers:
            self.add(handler)

    def add(self, handler: object) -> None:
        name = getattr(handler, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(handler).__name__} has no 'name' attribute")
        if name in self._commands:
            raise ValueError(f"handler {name!r} is already registered")
        invalid_code = getattr(handler, "invalid_code", Code.INVALID_PARAMETER)
        commands = {}
        for attr in dir(type(handler)):
            spec = getattr(getattr(type(handler), attr), _MARK, None)
            if spec is None:
                continue
            if spec.name in commands:
                raise ValueError(f"{name}.{spec.name} is declared twice")
            commands[spec.name] = BoundCommand(name, spec, getattr(handler, attr), spec.invalid_code or invalid_code)
        self._commands[name] = commands
        self.handlers.append(handler)

    def lookup(self, handler: str, command: str) -> BoundCommand:
        commands = self._commands.get(handler)
        if commands is None:
            raise UnknownHandler(f"no handler named {handler!r}", field="handler")
        bound = commands.get(command)
        if bound is None:
            known = ", ".join(sorted(commands))
            raise UnknownCommand(f"{handler} has no command {command!r}; it has: {known}", field="command")
        return bound

    def catalogue(self) -> dict[str, list[str]]:
        return {name: sorted(commands) for name, commands in sorted(self._commands.items())}

    def commands(self) -> Iterable[BoundCommand]:
        for commands in self._commands.values():
            yield from commands.values()
