"""A cap on the bytes of every request body the server reads, file uploads aside (gradio's ``max_file_size``
caps those while they stream in). The handlers check each text they are given (``common.as_text``); this
keeps a body far beyond any of those (a gigabyte of JSON) from being read into memory at all."""
from __future__ import annotations

import json

UPLOAD_PATHS = ("/upload",)  # gradio's file route, under its API prefix


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request whose Content-Length says more than ``max_bytes`` is answered 413 before its
    body is read; one that streams more without saying so is cut off at ``max_bytes`` (413, or FastAPI's 400
    when the route was already reading it)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(UPLOAD_PATHS):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await self.refuse(send)

    async def refuse(self, send):
        body = json.dumps({"error": f"the request is larger than {self.max_bytes:,} bytes, the most this server "
                                    "reads (files go through the upload, each at most the server's file size)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
