"""Typed keys for what the application carries (``web.AppKey``)."""

from __future__ import annotations

import socketio
from aiohttp import web

from handlers.auth import TokenVerifier
from handlers.chat import ChatService
from handlers.events import ChatEvents
from storage import Store
from storage.attachments import AttachmentStore

from .config import Settings
from .membership import MembershipWatch
from .scale_out import Cluster
from .webhooks import WebhookSender

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
SIO = web.AppKey("sio", socketio.AsyncServer)
EVENTS = web.AppKey("events", ChatEvents)
CHAT = web.AppKey("chat", ChatService)
VERIFIER = web.AppKey("verifier", TokenVerifier)
CLUSTER = web.AppKey("cluster", Cluster)
WEBHOOKS = web.AppKey("webhooks", WebhookSender)
MEMBERSHIP = web.AppKey("membership", MembershipWatch)
ATTACHMENTS = web.AppKey("attachments", AttachmentStore)
