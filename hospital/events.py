"""Typed domain events: what one stage tells the later ones, one frozen dataclass per kind.

A stage declares its events in its own `events.py` (subclasses of `DomainEvent`) and publishes them
with `hospital.jobs.publish(session, SomeEvent(...))`; later stages subscribe by type in their
`wiring.py`. An event carries what its subscribers need to act (ids and a few plain facts: ints,
strings, booleans, ISO 8601 times), never ORM objects: it is written to a job record and travels
through Redis. A subscriber that needs more reads it through the publishing stage's public face.

Every declared event type must have a subscriber once the app is wired (`hospital.jobs.
check_subscriptions`, run by the app factory): an event nobody handles is a programming error found
at start-up, not work silently dropped at run time.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any, ClassVar, Self

logger = logging.getLogger(__name__)

_PLAIN = (int, str, bool, type(None))
_EVENT_TYPES: dict[str, type[DomainEvent]] = {}


class UnknownEvent(LookupError):
    """A job record names an event type that no loaded module declares."""


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    """Base of every event. Subclasses set `name` (stable: it is stored in job records)."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} must set a class attribute `name`")
        existing = _EVENT_TYPES.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"event name {name!r} is declared twice: {existing.__qualname__}, {cls.__qualname__}")
        _EVENT_TYPES[name] = cls

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, _PLAIN):
                raise TypeError(
                    f"{type(self).__name__}.{field.name} must be an int, str, bool or None, got {type(value).__name__}"
                )

    def payload(self) -> dict[str, Any]:
        """The fields as a JSON object (what a job record stores)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        return cls(**payload)


def event_type(name: str) -> type[DomainEvent]:
    try:
        return _EVENT_TYPES[name]
    except KeyError:
        raise UnknownEvent(f"no event type is declared with the name {name!r}") from None


def withdraw_event_type(name: str) -> None:
    """Forget a declared event type (a test's throwaway declaration)."""
    _EVENT_TYPES.pop(name, None)


def declared_event_types() -> list[type[DomainEvent]]:
    return sorted(_EVENT_TYPES.values(), key=lambda cls: cls.name)


def iso_instant(instant: datetime | None) -> str | None:
    """A timezone-aware instant as it travels in an event (ISO 8601, UTC offset kept)."""
    return None if instant is None else instant.isoformat()


def parse_instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
