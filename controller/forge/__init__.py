"""The forge (Gitea, Forgejo): its REST API v1 client, and its webhook deliveries."""

from controller.forge.client import Comment, ForgeClient, PullRequest
from controller.forge.events import CommentEvent, parse_comment_event, signature_ok
from controller.forge.server import Answer, Handler, make_server, webhook_app

__all__ = [
    "Answer",
    "Comment",
    "CommentEvent",
    "ForgeClient",
    "Handler",
    "PullRequest",
    "make_server",
    "parse_comment_event",
    "signature_ok",
    "webhook_app",
]
