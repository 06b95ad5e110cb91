"""Login (session cookie + CSRF token for the web UI), logout, who am I, personal API tokens."""

from __future__ import annotations

import functools
import os

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from resources import logs
from resources.accounts import LoginLimiter, User
from upload_api.deps import SESSION_COOKIE, CleanStr, accounts, current_user, job_store

router = APIRouter(prefix="/api", tags=["auth"])


@functools.cache
def limiter() -> LoginLimiter:
    return LoginLimiter(job_store(), attempts=int(os.environ.get("LOGIN_MAX_FAILURES", "5")))


class LoginIn(BaseModel):
    username: CleanStr = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenIn(BaseModel):
    name: CleanStr = Field(default="api", min_length=1, max_length=128)


@router.post("/auth/login")
def login(body: LoginIn, request: Request, response: Response):
    client = request.client.host if request.client else "?"
    keys = (f"ip:{client}", f"user:{body.username.strip().lower()}")
    wait = limiter().retry_after(*keys)
    if wait:
        logs.audit("login_rate_limited", username=body.username[:64], client=client)
        raise HTTPException(429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)})
    user = accounts().verify_password(body.username, body.password)
    if user is None:
        limiter().fail(*keys)
        logs.audit("login_failed", username=body.username[:64], client=client)
        raise HTTPException(401, "wrong user name or password")
    limiter().clear(*keys)
    sid, csrf = accounts().create_session(user)
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax", path="/",
                        secure=os.environ.get("COOKIE_SECURE", "0") == "1", max_age=14 * 24 * 3600)
    logs.user_id.set(user.id)
    logs.audit("login", client=client)
    return {"user": {"id": user.id, "name": user.name, "role": user.role}, "csrf_token": csrf}


@router.post("/auth/logout")
def logout(request: Request, response: Response, user: User = Depends(current_user)):
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        accounts().end_session(sid)
    response.delete_cookie(SESSION_COOKIE, path="/")
    logs.audit("logout")
    return {"ok": True}


@router.get("/me")
def me(user: User = Depends(current_user)):
    return {"id": user.id, "name": user.name, "role": user.role}


@router.post("/tokens", status_code=201)
def create_token(body: TokenIn, user: User = Depends(current_user)):
    token = accounts().create_token(user, body.name)
    logs.audit("token_created", token_name=body.name)
    return {"token": token, "name": body.name, "note": "shown once: store it now"}
