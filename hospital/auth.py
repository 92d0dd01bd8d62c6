"""Who is calling: password login, bearer tokens, browser sessions, and role checks.

Bearer tokens are random, stored only as SHA-256, expire, and can be revoked. Pages use the
signed Flask session cookie, which carries when the user signed in and when they were last seen:
it ends after `SESSION_IDLE_MINUTES` without a request and `SESSION_MAX_HOURS` after signing in,
so a shared ward computer left signed in does not stay signed in. The cookie also names a
server-side `BrowserSession` (a random id, stored as SHA-256 like a token) that is checked on every
request: signing out revokes it, so a copy of the cookie stops working too, and whatever revokes an
account's tokens because the account may no longer be trusted (deactivation, a lock, a new
password) revokes its browser sessions as well. Passwords use Werkzeug's scrypt KDF.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import Flask, current_app, flash, g, has_request_context, request
from flask import session as cookie_session
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from hospital.audit import OUTCOME_DENIED, record_access
from hospital.auth_cache import GENERATION, BearerCache, user_from
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import AccessDenied, Unauthenticated
from hospital.models import ApiToken, BrowserSession, Role, SmartClient, SmartRefreshToken, User
from hospital.ratelimit import check_rate
from hospital.smart_scopes import SmartAccess

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

MAX_FAILED_LOGINS = 5
# The first lock lasts this long; each further failure after a lock doubles it, up to the cap. A
# guesser is slowed to a handful of tries an hour, and a prankster cannot lock anyone out for long.
FIRST_LOCK_SECONDS = 60
MAX_LOCK_SECONDS = 3600
# The one answer to any failed sign-in, so it tells nobody which usernames exist or are locked.
SIGN_IN_FAILED = "unknown username or wrong password, or too many attempts; try again in a few minutes"
# Cookie-session keys for the times of a sign-in, in UTC epoch seconds (the cookie is JSON).
SIGNED_IN_AT = "signed_in_at"
LAST_SEEN_AT = "last_seen_at"
# Cookie-session key for the random id of the server-side BrowserSession record.
SESSION_ID = "sid"
SESSION_ENDED = "Your session has ended. Sign in again to continue."
# Last-seen is rewritten at most this often: a new Set-Cookie on every response costs bytes and lets
# two open tabs overwrite each other's cookie for nothing. Idle time is measured to within this.
LAST_SEEN_STEP_SECONDS = 60
# Sent by a page's own background polling (hospital/static/js): such a request is not the user at
# the keyboard, so it may find the session ended but does not keep it alive.
BACKGROUND_REQUEST_HEADER = "X-Background-Request"
# One fixed hash to compare against when the user does not exist, so timing does not reveal it.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def authenticate(session: Session, username: str, password: str) -> User:
    """Check a username and password; lock the account for a while after repeated failures, and
    throttle attempts per client address so guessing across many accounts is slow too. Every
    failure gets the same answer and is audited (the caller commits it with the failure count)."""
    limit = int(current_app.config["LOGIN_ATTEMPTS_PER_MINUTE"])
    check_rate(f"login:{request.remote_addr if has_request_context() else 'local'}", limit, 60)
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active or is_locked(user):
        check_password_hash(_DUMMY_HASH if user is None else user.password_hash, password)  # same time either way
        _record_failed_sign_in(session, user, "unknown username" if user is None else "account inactive or locked")
        raise Unauthenticated(SIGN_IN_FAILED)
    if not check_password_hash(user.password_hash, password):
        user.failed_logins += 1
        reason = "wrong password"
        if user.failed_logins >= MAX_FAILED_LOGINS:
            seconds = lock_seconds(user.failed_logins)
            user.locked_until = utcnow() + timedelta(seconds=seconds)
            revoked = revoke_user_tokens(session, user)
            ended = revoke_user_sessions(session, user)
            reason += f"; account locked for {seconds} s, {revoked} token(s) revoked, {ended} browser session(s) ended"
            logger.warning("user %s locked for %d s after %d failed sign-ins", user.id, seconds, user.failed_logins)
        _record_failed_sign_in(session, user, reason)
        raise Unauthenticated(SIGN_IN_FAILED)
    user.failed_logins = 0
    user.locked_until = None
    return user


def lock_seconds(failed_logins: int) -> int:
    """How long the account locks at this many consecutive failures: doubling from the first lock."""
    return int(min(MAX_LOCK_SECONDS, FIRST_LOCK_SECONDS * 2 ** max(0, failed_logins - MAX_FAILED_LOGINS)))


def is_locked(user: User) -> bool:
    """Locked by failed sign-ins: until `locked_until`; with no time set (a lock from before locks
    expired), until an administrator unlocks it."""
    if user.failed_logins < MAX_FAILED_LOGINS:
        return False
    return user.locked_until is None or user.locked_until > utcnow()


def _record_failed_sign_in(session: Session, user: User | None, reason: str) -> None:
    # The username tried is not recorded for an unknown user: it is often a password typed in the
    # wrong box.
    record_access(session, user, "E", "User", user.id if user is not None else None, outcome=OUTCOME_DENIED,
                  description=f"sign-in failed: {reason}")


def issue_token(session: Session, user: User, ttl_seconds: int) -> tuple[str, ApiToken]:
    """Create a bearer token; the plain value is returned once and never stored."""
    plain = secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        token_sha256=_sha256(plain),
        expires_at=utcnow() + timedelta(seconds=ttl_seconds),
    )
    session.add(token)
    session.flush()
    return plain, token


def revoke_token(session: Session, plain: str) -> None:
    token = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _sha256(plain)))
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()


def revoke_user_tokens(session: Session, user: User) -> int:
    """Revoke every live bearer token of `user`: a token carries no role of its own, but it must not
    outlive a change of what the account may do (role, organisation, deactivation, a reset
    password). Returns how many tokens were live."""
    now = utcnow()
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)
        .values(revoked_at=now)
    )
    # A SMART app's refresh token would buy a new access token: it goes too (not counted: it is
    # not a bearer token the account could use itself).
    session.execute(
        update(SmartRefreshToken)
        .where(SmartRefreshToken.user_id == user.id, SmartRefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def token_and_user(session: Session, plain: str) -> tuple[ApiToken, User] | None:
    """A live bearer token and its active account, in one round trip."""
    row = session.execute(
        select(ApiToken, User).join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == _sha256(plain), ApiToken.revoked_at.is_(None),
               ApiToken.expires_at > utcnow(), User.active.is_(True))
    ).first()
    return (row[0], row[1]) if row is not None else None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def start_browser_session(session: Session, user: User) -> None:
    """Sign `user` in on this browser: the cookie session starts empty (nothing from before, such as
    the previous user's CSRF token on a shared computer, carries over), records the time, and names
    a new server-side session record."""
    now = _epoch_seconds()
    cookie_session.clear()
    cookie_session["user_id"] = user.id
    cookie_session[SIGNED_IN_AT] = now
    cookie_session[LAST_SEEN_AT] = now
    cookie_session[SESSION_ID] = _new_session_record(session, user)


def renew_browser_session(session: Session, user: User) -> None:
    """Give this browser a new session record, keeping its sign-in times (after a password change
    that ended every session of the user, this one carries on under a fresh id)."""
    _revoke_current_record(session)
    cookie_session[SESSION_ID] = _new_session_record(session, user)


def end_browser_session(session: Session) -> None:
    """Sign this browser out: its session record is revoked, so a copy of the cookie is useless."""
    _revoke_current_record(session)
    cookie_session.clear()


def revoke_user_sessions(session: Session, user: User) -> int:
    """End every browser session of `user` at its next request. Returns how many were live."""
    result = session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user.id, BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _new_session_record(session: Session, user: User) -> str:
    plain = secrets.token_urlsafe(32)
    session.add(BrowserSession(user_id=user.id, session_sha256=_sha256(plain)))
    session.flush()
    return plain


def _current_record(session: Session) -> BrowserSession | None:
    plain = cookie_session.get(SESSION_ID)
    if not isinstance(plain, str):
        return None
    return session.scalar(select(BrowserSession).where(BrowserSession.session_sha256 == _sha256(plain)))


def _revoke_current_record(session: Session) -> None:
    record = _current_record(session)
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()


def _epoch_seconds() -> int:
    return int(utcnow().timestamp())


def _browser_session_end_notice(now: int) -> str | None:
    """Why the cookie session has ended, as the sign-in page should say it; None while it is live."""
    signed_in_at, last_seen_at = cookie_session.get(SIGNED_IN_AT), cookie_session.get(LAST_SEEN_AT)
    if not isinstance(signed_in_at, int) or not isinstance(last_seen_at, int):
        # Signed in before sessions carried their times: its age is unknown, so it is over.
        return SESSION_ENDED
    idle_minutes = int(current_app.config["SESSION_IDLE_MINUTES"])
    max_hours = int(current_app.config["SESSION_MAX_HOURS"])
    if now - last_seen_at > idle_minutes * 60:
        return f"You were signed out after {_count(idle_minutes, 'minute')} without activity."
    if now - signed_in_at > max_hours * 3600:
        return f"You were signed out {_count(max_hours, 'hour')} after signing in. Sign in again to continue."
    return None


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _load_cookie_user(db_session: Session) -> User | None:
    """The user of the signed cookie session, or None (and the session cleared) once it has ended."""
    now = _epoch_seconds()
    notice = _browser_session_end_notice(now)
    if notice is not None:
        logger.info("browser session of user %s ended: %s", cookie_session.get("user_id"), notice)
        cookie_session.clear()
        flash(notice)  # shown on the sign-in page the caller is sent to next
        return None
    record = _current_record(db_session)
    if record is None or record.revoked_at is not None or record.user_id != cookie_session["user_id"]:
        # Signed out (perhaps in another copy of this cookie), or ended by a change to the account.
        logger.info("browser session of user %s ended on the server", cookie_session.get("user_id"))
        cookie_session.clear()
        flash(SESSION_ENDED)
        return None
    user = db_session.get(User, cookie_session["user_id"])
    if user is None or not user.active:
        cookie_session.clear()
        return None
    background = bool(request.headers.get(BACKGROUND_REQUEST_HEADER))
    if not background and now - cookie_session[LAST_SEEN_AT] >= LAST_SEEN_STEP_SECONDS:
        cookie_session[LAST_SEEN_AT] = now
    return user


def load_current_user() -> User | None:
    """Resolve the caller from a bearer token or the session cookie, once per request."""
    if g.get("current_user_request") is request._get_current_object():  # type: ignore[attr-defined]
        cached: User | None = g.current_user
        return cached
    user: User | None = None
    db_session = request_session()
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        user = _bearer_user(db_session, value.strip())
        g.auth_via = "token"
    elif "user_id" in cookie_session:
        user = _load_cookie_user(db_session)
        g.auth_via = "cookie"
    g.current_user = user
    g.current_user_request = request._get_current_object()  # type: ignore[attr-defined]
    return user


def _bearer_user(db_session: Session, plain: str) -> User:
    """The account of a live bearer token, from this process's short-lived cache when it found
    the token a moment ago (`hospital.auth_cache`), else from the database; a SMART app's grant
    goes in `g.smart_access`."""
    cache: BearerCache = current_app.extensions["hospital.bearer_cache"]
    digest, now = _sha256(plain), utcnow()
    entry = cache.get(digest, now)  # always a miss when the cache is off: nothing is put
    if entry is not None:
        smart = entry.smart
        user = user_from(db_session, entry)
    else:
        generation = GENERATION.value
        found = token_and_user(db_session, plain)
        if found is None:
            raise Unauthenticated("the bearer token is invalid, expired or revoked")
        token, user = found
        smart = _smart_access_of(db_session, token) if token.smart_client_id is not None else None
        cache.put(digest, generation, now, token, user, smart)
    if smart is not None:
        # Such a token opens the FHIR API only (its scopes speak FHIR resource types, which the
        # other APIs do not).
        if request.path != "/fhir" and not request.path.startswith("/fhir/"):
            raise Unauthenticated("this token was issued to a SMART app and is valid at /fhir only")
        g.smart_access = smart
    return user


def _smart_access_of(db_session: Session, token: ApiToken) -> SmartAccess:
    """The grant of a token issued to a SMART app."""
    client_id = db_session.scalar(select(SmartClient.client_id).where(SmartClient.id == token.smart_client_id))
    return SmartAccess.from_token(client_id or "?", token.scope or "", token.patient_id)


def init_app(app: Flask) -> None:
    app.extensions["hospital.bearer_cache"] = BearerCache(int(app.config["AUTH_CACHE_SECONDS"]))


def current_user() -> User:
    user = load_current_user()
    if user is None:
        raise Unauthenticated("authentication required")
    return user


def require_roles(*roles: Role) -> Callable[[F], F]:
    """Route decorator: the caller must be signed in with one of `roles` (any role if none)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if roles and user.role not in roles:
                raise AccessDenied(f"role {user.role.value!r} may not do this")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


def token_ttl() -> int:
    return int(current_app.config["TOKEN_TTL_SECONDS"])
