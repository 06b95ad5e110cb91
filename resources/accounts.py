"""Users, personal API tokens and web sessions, in the job store's database.

Passwords are hashed with argon2; tokens and session ids are stored only as SHA-256 hashes, so a
leaked database gives no usable credential."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Mapped, Session, mapped_column

from resources.jobstore import Base, JobStore

ROLES = ("admin", "user")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "dub_"
SESSION_DAYS = 14
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Made on first use, not at import (every run worker imports this module; an argon2 hash is
    about 0.1 s of CPU)."""
    return _HASHER.hash("not a password: keeps unknown-user logins as slow as real ones")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class UserRow(Base):
    __tablename__ = "dub_users"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(sa.Text, nullable=False)
    role: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class TokenRow(Base):
    __tablename__ = "dub_tokens"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("dub_users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class SessionRow(Base):
    __tablename__ = "dub_sessions"

    id_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("dub_users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class LoginFailureRow(Base):
    __tablename__ = "dub_login_failures"
    __table_args__ = (sa.Index("ix_dub_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    at: Mapped[float] = mapped_column(sa.Float, nullable=False)


class LoginLimiter:
    """Failed logins per window: at most `attempts` per user name, and `per_address` (more, so that
    users behind one proxy address do not lock each other out as fast) per client address. A
    success clears only its user name's failures. Kept in the database, so the limit holds across
    API processes and machines (a per-process count would multiply it by the replicas)."""

    def __init__(self, store: JobStore, attempts: int = 5, window_s: float = 300.0,
                 per_address: int | None = None):
        self.store, self.attempts, self.window = store, attempts, window_s
        self.per_address = per_address or attempts * 4

    def _limit(self, key: str) -> int:
        return self.per_address if key.startswith("ip:") else self.attempts

    def retry_after(self, *keys: str) -> int:
        now = time.time()
        waits = []
        with Session(self.store.engine()) as s:
            for key in keys:
                count, first = s.execute(sa.select(sa.func.count(), sa.func.min(LoginFailureRow.at))
                                         .where(LoginFailureRow.key == key[:200],
                                                LoginFailureRow.at > now - self.window)).one()
                if count >= self._limit(key):
                    waits.append(int(self.window - (now - first)) + 1)
        return max(waits, default=0)

    def fail(self, *keys: str) -> None:
        now = time.time()
        with Session(self.store.engine()) as s, s.begin():
            s.execute(sa.delete(LoginFailureRow).where(LoginFailureRow.at <= now - self.window))
            s.add_all(LoginFailureRow(key=key[:200], at=now) for key in keys)

    def clear(self, *keys: str) -> None:
        users = [key[:200] for key in keys if not key.startswith("ip:")]
        if users:
            with Session(self.store.engine()) as s, s.begin():
                s.execute(sa.delete(LoginFailureRow).where(LoginFailureRow.key.in_(users)))


class RateMarkRow(Base):
    """The last time an action limited to one per interval was taken, by key (e.g. "test-notify:<user>")."""

    __tablename__ = "dub_rate_marks"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    at: Mapped[float] = mapped_column(sa.Float, nullable=False)


def take_turn(store: JobStore, key: str, interval_s: float) -> int:
    """One action per `interval_s` for `key`, across every API process on this database: 0 when this
    caller may act now (and the time is marked in the same statement, so two processes asking at once
    cannot both get 0), else the seconds to wait."""
    now = time.time()
    engine = store.engine()
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(RateMarkRow).values(key=key[:200], at=now)
    stmt = stmt.on_conflict_do_update(index_elements=[RateMarkRow.key], set_={"at": now},
                                      where=RateMarkRow.at <= now - interval_s).returning(RateMarkRow.key)
    with engine.begin() as conn:
        if conn.execute(stmt).first() is not None:
            return 0
        last = conn.execute(sa.select(RateMarkRow.at).where(RateMarkRow.key == key[:200])).scalar_one()
    return max(1, int(interval_s - (now - last)) + 1)


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, role=row.role)


class AccountError(ValueError):
    pass


class Accounts:
    def __init__(self, store: JobStore | None = None):
        self.store = store or JobStore()

    def session(self) -> Session:
        return Session(self.store.engine(), expire_on_commit=False)

    # users -------------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, role: str = "user") -> User:
        name = name.strip().lower()
        if not NAME_RE.match(name):
            raise AccountError(
                "user names are 1-64 characters: a-z, 0-9, '_', '.', '-' (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise AccountError(f"role must be admin or user, not {role!r}")
        if len(password) < 10:
            raise AccountError("passwords need at least 10 characters")
        row = UserRow(id="u" + secrets.token_hex(8), name=name, password_hash=_HASHER.hash(password),
                      role=role, created_at=utcnow())
        with self.session() as s, s.begin():
            if s.scalar(sa.select(UserRow.id).where(UserRow.name == name)):
                raise AccountError(f"user {name} already exists")
            s.add(row)
        return User(row.id, row.name, row.role)

    def get_user(self, user_id: str) -> User | None:
        with self.session() as s:
            row = s.get(UserRow, user_id)
            return _user(row) if row else None

    def user_by_name(self, name: str) -> User | None:
        with self.session() as s:
            row = s.scalar(sa.select(UserRow).where(UserRow.name == name.strip().lower()))
            return _user(row) if row else None

    def count_admins(self) -> int:
        with self.session() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(UserRow).where(UserRow.role == "admin")) or 0

    def verify_password(self, name: str, password: str) -> User | None:
        with self.session() as s:
            row = s.scalar(sa.select(UserRow).where(UserRow.name == name.strip().lower()))
        try:
            _HASHER.verify(row.password_hash if row else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        return _user(row) if row else None

    def ensure_first_admin(self) -> tuple[str, str] | None:
        """Create user `admin` with a random password when there is no admin; returns (name,
        password) to show once, or None when an admin exists."""
        if self.count_admins():
            return None
        password = secrets.token_urlsafe(15)
        name = "admin"
        if self.user_by_name(name):
            name = "admin-" + secrets.token_hex(2)
        self.add_user(name, password, role="admin")
        return name, password

    # tokens ------------------------------------------------------------------------------------
    def create_token(self, user: User, name: str = "api") -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.session() as s, s.begin():
            s.add(TokenRow(id="t" + secrets.token_hex(8), user_id=user.id, name=name[:128],
                           token_hash=digest(token), created_at=utcnow()))
        return token

    def user_for_token(self, token: str) -> User | None:
        """The token's user, in one query (every API request asks); last use is written at most
        once a minute."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self.session() as s:
            found = s.execute(sa.select(UserRow, TokenRow.id, TokenRow.last_used_at)
                              .join(TokenRow, TokenRow.user_id == UserRow.id)
                              .where(TokenRow.token_hash == digest(token), TokenRow.revoked_at.is_(None))).first()
            if found is None:
                return None
            user, token_id, last = found
            now = utcnow()
            if as_utc(last) is None or (now - as_utc(last)).total_seconds() > 60:
                s.execute(sa.update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=now))
                s.commit()
            return _user(user)

    # sessions ----------------------------------------------------------------------------------
    def create_session(self, user: User) -> tuple[str, str]:
        """(session id for the cookie, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = utcnow()
        with self.session() as s, s.begin():
            s.add(SessionRow(id_hash=digest(sid), user_id=user.id, csrf_token=csrf, created_at=now,
                             expires_at=now + dt.timedelta(days=SESSION_DAYS)))
        return sid, csrf

    def session_user(self, sid: str) -> tuple[User, str] | None:
        """(user, csrf token) for a live session id."""
        if not sid or len(sid) > 200:
            return None
        with self.session() as s:
            row = s.get(SessionRow, digest(sid))
            if row is None or as_utc(row.expires_at) < utcnow():
                return None
            user = s.get(UserRow, row.user_id)
            return (_user(user), row.csrf_token) if user else None

    def end_session(self, sid: str) -> None:
        with self.session() as s, s.begin():
            s.execute(sa.delete(SessionRow).where(SessionRow.id_hash == digest(sid)))


def csrf_matches(expected: str, given: str | None) -> bool:
    # as bytes: compare_digest raises TypeError on non-ASCII str (header bytes arrive as latin-1)
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())
