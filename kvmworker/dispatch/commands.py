"""How commands are declared, and the registry that binds them to the handlers that implement them.

A command is declared once, by ``@command(Model, …)`` on a method; the decorator only attaches a ``CommandSpec``.
The worker's handlers declare theirs on the abstract methods of an API class in ``kvmworker.api`` (pydantic and
``kvmworker.protocol`` only, so the bridge and ``kvmworker schema`` list them without building a worker), and
each handler subclasses its API class and implements the commands::

    class NamespaceApi(ABC):                          # kvmworker/api/namespace.py
        name = "NamespaceHandler"

        @command(NamespaceRef, resource=namespace_key)
        @abstractmethod
        def create(self, data: NamespaceRef, ctx: Context) -> dict: ...

    class NamespaceHandler(NamespaceApi):             # kvmworker/handlers/namespace.py
        def create(self, data, ctx): ...              # does it
        def plan_create(self, data, ctx) -> Plan: ... # says what it would do

A small handler (the tests' own) may declare and implement in one class.

**Dry run.** Every mutating command has a plan: ``plan_<method>(data, ctx) -> Plan``, which checks what the command
checks and says what it would do, changing nothing. ``BoundCommand.call`` answers a dry run of a mutating command
with ``{"dry_run": true, "plan": [...]}`` from it; a read-only command's dry run is the real thing. No handler
looks at ``ctx.dry_run`` itself.

``HandlerRegistry.add`` refuses a handler whose methods and declarations disagree: a declared command left
unimplemented or unable to take ``(data, ctx)``, a mutating command without a plan, a plan for no mutating
command, a command declared twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from kvmworker.protocol.codes import Code
from kvmworker.protocol.errors import UnknownCommand, UnknownHandler

if TYPE_CHECKING:
    from kvmworker.dispatch.context import Context

_MARK = "__kvm_command__"
PLAN_PREFIX = "plan_"


class NoData(BaseModel):
    """For commands that take no parameters (unknown keys are ignored, as legacy callers send extras)."""

    model_config = ConfigDict(extra="ignore")


ResourceOf = Callable[[Any], str | None]


class DeclarationError(ValueError):
    """A handler and its declarations disagree, or a handler is registered twice: the worker does not start."""


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
    """Declare a handler method as a command.

    ``resource`` maps the validated data to a key: commands with the same key run one after another.
    ``invalid_code`` overrides the handler's code for data that fails validation.
    ``mutates=False`` marks read-only commands (their dry run is the real thing); a mutating one needs a
    ``plan_<method>``.
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
class Plan:
    """What a mutating command would do: its ``steps`` in order (none: nothing to do), and what it would store
    that a step cannot show (``details``, e.g. a VM's domain ``xml``)."""

    steps: Sequence[Any]
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if {"dry_run", "plan"} & set(self.details):
            raise ValueError("a plan's details may not be called dry_run or plan")

    def reply(self) -> dict[str, Any]:
        """The data of a dry run's reply, the same for every command."""
        return {"dry_run": True, "plan": list(self.steps), **self.details}


@dataclass(frozen=True)
class Declared:
    """One command of one handler, as declared: readable without building the handler."""

    handler: str
    spec: CommandSpec

    @property
    def name(self) -> str:
        return self.spec.name


Run = Callable[[Any, "Context"], Any]
PlanOf = Callable[[Any, "Context"], Plan]


@dataclass(frozen=True)
class BoundCommand(Declared):
    run: Run
    plan: PlanOf | None
    invalid_code: Code

    def call(self, data: BaseModel, ctx: Context) -> Any:
        """The command; in a dry run of a mutating command, its plan instead."""
        if ctx.dry_run and self.plan is not None:
            return self.plan(data, ctx).reply()
        return self.run(data, ctx)


def handler_name(cls: type) -> str:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} has no 'name' attribute")
    return name


def declared(cls: type) -> list[Declared]:
    """The commands a handler class (or its API class) declares, in the order they are written."""
    name = handler_name(cls)
    return [Declared(name, spec) for _, spec in _declarations(cls)]


def _declarations(cls: type) -> list[tuple[str, CommandSpec]]:
    """(method name, spec) of every declared command of ``cls`` and its bases."""
    found: dict[str, tuple[type, CommandSpec]] = {}
    names: set[str] = set()
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, _MARK, None)
            if spec is None or (attr in found and found[attr][1] is spec):
                continue
            if attr in found:
                raise DeclarationError(
                    f"{cls.__name__}.{attr} is declared in both {found[attr][0].__name__} and {klass.__name__}"
                )
            if spec.name in names:
                raise DeclarationError(f"{cls.__name__}: command {spec.name!r} is declared twice")
            found[attr] = (klass, spec)
            names.add(spec.name)
    return [(attr, spec) for attr, (_, spec) in found.items()]


class HandlerRegistry:
    """Handlers by name and their commands by name; duplicate registrations and disagreements are refused."""

    def __init__(self, handlers: Iterable[object] = ()):
        self._commands: dict[str, dict[str, BoundCommand]] = {}
        self.handlers: list[object] = []
        for handler in handlers:
            self.add(handler)

    def add(self, handler: object) -> None:
        name = handler_name(type(handler))
        if name in self._commands:
            raise DeclarationError(f"handler {name!r} is already registered")
        invalid_code = getattr(handler, "invalid_code", Code.INVALID_PARAMETER)
        declarations = _declarations(type(handler))
        _check_no_stray_plans(handler, name, {attr for attr, spec in declarations if spec.mutates})
        self._commands[name] = {
            spec.name: _bind(handler, name, attr, spec, invalid_code) for attr, spec in declarations
        }
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


def _bind(handler: object, name: str, attr: str, spec: CommandSpec, invalid_code: Code) -> BoundCommand:
    run = getattr(handler, attr)
    if getattr(run, "__isabstractmethod__", False):
        raise DeclarationError(f"{name}.{spec.name} is declared but {type(handler).__name__} does not implement it")
    _check_takes_data_and_context(run, f"{name}.{attr}")
    plan = None
    if spec.mutates:
        plan = getattr(handler, PLAN_PREFIX + attr, None)
        if plan is None:
            raise DeclarationError(
                f"{name}.{spec.name} changes the host but {type(handler).__name__} has no {PLAN_PREFIX}{attr}: "
                "its dry run could not say what it would do (or declare it mutates=False)"
            )
        _check_takes_data_and_context(plan, f"{name}.{PLAN_PREFIX}{attr}")
    return BoundCommand(name, spec, run, plan, spec.invalid_code or invalid_code)


def _check_takes_data_and_context(method: Callable[..., Any], label: str) -> None:
    try:
        inspect.signature(method).bind(None, None)
    except TypeError:
        raise DeclarationError(f"{label} must take (data, ctx)") from None


def _check_no_stray_plans(handler: object, name: str, mutating: set[str]) -> None:
    for attr in dir(type(handler)):
        if attr.startswith(PLAN_PREFIX) and attr.removeprefix(PLAN_PREFIX) not in mutating:
            raise DeclarationError(
                f"{name}.{attr} plans {attr.removeprefix(PLAN_PREFIX)!r}, which is no mutating command of {name}"
            )
