"""Bearer tokens recently found live, kept per process for a few seconds (`AUTH_CACHE_SECONDS`).

Finding a token's account took a query per request, about a fifth of a FHIR read's cost. A
client sends the same token with each of its requests, so each process keeps what it found (the
account's columns and, for a SMART app's token, its grant) for a few seconds and rebuilds the
account from that, without a query.

What may change meanwhile is bounded two ways:
- A change committed in this process to an account, a token or a SMART app (a revoked token, a
  deactivated account, a new role) moves `GENERATION` when it commits (the session events below),
  which makes every entry filled before it a miss, so this process never serves a request on what
  it knows was withdrawn.
- A change made by another process (another web worker, the CLI) is seen at the latest
  `AUTH_CACHE_SECONDS` after it commits, when the entry ends. 0 turns the cache off.

An entry also ends when its token expires. Only the SHA-256 of a token is a key, as in the
database.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.session import make_transient_to_detached

from hospital.models import ApiToken, SmartClient, User
from hospital.smart_scopes import SmartAccess

# Records whose change can withdraw what a cached entry grants.
AUTH_TABLES = frozenset({User.__table__, ApiToken.__table__, SmartClient.__table__})
AUTH_MODELS = (User, ApiToken, SmartClient)
CHANGED_KEY = "hospital.auth_cache.changed"
# Account columns the cache does not hold: the password hash stays in the database (a request
# that checks a password loads it, as an expired attribute, when it reads it).
NOT_CACHED = frozenset({"password_hash"})
# Past this many entries the cache is emptied rather than grown (hostile callers sending many
# distinct valid tokens are few; this only bounds memory).
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CachedBearer:
    valid_until: datetime
    generation: int
    user_columns: dict[str, Any]
    smart: SmartAccess | None


class _Generation:
    """A counter moved by every committed change to an authentication record in this process:
    an entry filled under an older value is a miss."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def bump(self) -> None:
        with self._lock:
            self.value += 1


GENERATION = _Generation()


class BearerCache:
    def __init__(self, seconds: int) -> None:
        self.ttl = timedelta(seconds=seconds)
        self._entries: dict[str, CachedBearer] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > timedelta(0)

    def get(self, digest: str, now: datetime) -> CachedBearer | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.valid_until <= now or entry.generation != GENERATION.value:
            self._entries.pop(digest, None)
            return None
        return entry

    def put(self, digest: str, generation: int, now: datetime, token: ApiToken, user: User,
            smart: SmartAccess | None) -> None:
        """Keep what a query found live, under the generation read *before* that query: a change
        committed meanwhile has moved it, so the entry is never used."""
        if not self.enabled:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        columns = {attr.key: getattr(user, attr.key) for attr in inspect(User).column_attrs
                   if attr.key not in NOT_CACHED}
        self._entries[digest] = CachedBearer(min(now + self.ttl, token.expires_at), generation, columns, smart)


def user_from(session: Session, entry: CachedBearer) -> User:
    """The cached account as a persistent object of `session`, made without a query (the
    dogpile-cache pattern: a detached copy merged with load=False); each request gets its own."""
    user = User(**entry.user_columns)
    make_transient_to_detached(user)
    merged: User = session.merge(user, load=False)
    return merged


# --- what empties the cache: committed changes to authentication records ------------------------


@event.listens_for(Session, "after_flush")
def _note_flushed_auth_rows(session: Session, _context: UOWTransaction) -> None:
    # A new account, token or app withdraws nothing cached (a sign-in adds a token, and resets a
    # failure count that is usually 0 already: neither empties the cache); a real change to one,
    # or its deletion, may. The attributes' history is still there in after_flush.
    for row in session.deleted:
        if isinstance(row, AUTH_MODELS):
            session.info[CHANGED_KEY] = True
            return
    for row in session.dirty:
        if isinstance(row, AUTH_MODELS) and session.is_modified(row, include_collections=False):
            session.info[CHANGED_KEY] = True
            return


@event.listens_for(Session, "do_orm_execute")
def _note_bulk_auth_changes(state: ORMExecuteState) -> None:
    """`update(ApiToken)...` (revoking every token of an account) bypasses the flush."""
    if (state.is_update or state.is_delete) and getattr(state.statement, "table", None) in AUTH_TABLES:
        state.session.info[CHANGED_KEY] = True


@event.listens_for(Session, "after_commit")
def _bump_on_commit(session: Session) -> None:
    # A change rolled back leaves its mark until the session's next commit: at worst one clearing
    # of the cache more than needed, never one less.
    if session.info.pop(CHANGED_KEY, False):
        GENERATION.bump()
