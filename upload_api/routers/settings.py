"""A user's own settings: push notifications (ntfy). The server's ntfy secret never leaves the server:
answers say only whether notifications are configured and where the server is."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from resources import logs
from resources.accounts import User, take_turn
from resources.notify import NotifySettings
from upload_api.deps import current_user, job_store, notify_store, ntfy

router = APIRouter(prefix="/api/settings", tags=["settings"])
log = logging.getLogger("dubbing.api")
TEST_INTERVAL_S = 5.0  # one test notification per user per 5 s, through all API processes together


class NotificationsIn(BaseModel):
    """Fields left out keep their value; topic null or "" goes back to the default topic."""

    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool | None = None
    topic: StrictStr | None = Field(default=None, max_length=200)
    priority: StrictInt | None = Field(default=None, ge=1, le=5, description="ntfy priority, 1 (min) to 5 (max)")
    on_success: StrictBool | None = None
    on_failure: StrictBool | None = None
    on_cancel: StrictBool | None = None


class SettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notifications: NotificationsIn


def settings_view(user: User, current: NotifySettings) -> dict:
    server = ntfy()
    return {
        "notifications": {**current.to_dict(), "effective_topic": server.topic_for(user.name, current),
                          "default_topic": server.default_topic(user.name)},
        "server": {"configured": server.configured, "url": server.server_label() or None,
                   "auth_configured": server.auth_configured,
                   "deep_links": bool(server.public_base_url.strip())},
    }


@router.get("")
async def get_settings(user: User = Depends(current_user)):
    current = await run_in_threadpool(notify_store().get_settings, user.id)
    return settings_view(user, current)


@router.put("")
async def put_settings(body: SettingsIn, user: User = Depends(current_user)):
    changes = {k: getattr(body.notifications, k) for k in body.notifications.model_fields_set}
    for key, value in list(changes.items()):
        if value is None and key != "topic":
            raise HTTPException(422, f"notifications.{key}: must not be null (leave it out to keep it)")
    if changes.get("topic"):
        problem = ntfy().custom_topic_problem(changes["topic"])
        if problem:
            raise HTTPException(422, f"notifications.topic: {problem}")
        taken = await run_in_threadpool(notify_store().topic_taken, changes["topic"], user.id, ntfy())
        if taken:
            raise HTTPException(409, "notifications.topic: this topic belongs to another user; choose another")
    current = await run_in_threadpool(lambda: notify_store().put_settings(user.id, **changes))
    logs.audit("notification settings changed", user_id=user.id, fields=sorted(changes))
    return settings_view(user, current)


@router.post("/test-notification")
async def test_notification(user: User = Depends(current_user)):
    """Send a test message to the user's topic now (not through the outbox: the answer says whether
    the server took it)."""
    server = ntfy()
    if not server.configured:
        raise HTTPException(409, "notifications are not configured on this server: an administrator sets NTFY_URL")
    wait = await run_in_threadpool(take_turn, job_store(), f"test-notify:{user.id}", TEST_INTERVAL_S)
    if wait:
        raise HTTPException(429, f"one test notification every {TEST_INTERVAL_S:.0f} s: try again shortly",
                            headers={"Retry-After": str(wait)})
    current = await run_in_threadpool(notify_store().get_settings, user.id)
    topic = server.topic_for(user.name, current)
    delivery = await run_in_threadpool(server.publish, server.test_message(topic, current.priority, user.name))
    logs.log(log, "ntfy send", level=logging.INFO if delivery.ok else logging.WARNING, kind="test",
             outcome=delivery.outcome, status=delivery.status, reason=delivery.reason, topic=topic, attempt=1)
    if not delivery.ok:
        raise HTTPException(502, f"the test notification was not delivered: {delivery.reason}")
    return {"delivered": True, "topic": topic}
