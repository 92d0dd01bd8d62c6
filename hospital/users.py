"""User accounts as an administrator sees them: the list of users with their roles, and unlocking
an account that repeated failed sign-ins have locked."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.auth import MAX_FAILED_LOGINS
from hospital.errors import Forbidden, NotFound
from hospital.models import Role, User

logger = logging.getLogger(__name__)


def is_locked(user: User) -> bool:
    """Locked by failed sign-ins (the rule `authenticate` applies)."""
    return user.failed_logins >= MAX_FAILED_LOGINS


def list_users(session: Session, admin: User) -> list[User]:
    if admin.role is not Role.ADMIN:
        raise Forbidden("the user list is for administrators")
    users = list(session.scalars(select(User).order_by(User.role, User.username)))
    record_access(session, admin, "E", "User", None, description=f"user list ({len(users)})")
    return users


def unlock_user(session: Session, admin: User, user_id: int) -> User:
    """Clear the failed sign-in count so the user may sign in again. Unlocking an account that is
    not locked changes nothing."""
    if admin.role is not Role.ADMIN:
        raise Forbidden("only an administrator unlocks accounts")
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    if user.failed_logins == 0:
        return user
    user.failed_logins = 0
    session.flush()
    record_access(session, admin, "U", "User", user.id, description="unlocked")
    logger.info("user %s unlocked by user %s", user.id, admin.id)
    return user
