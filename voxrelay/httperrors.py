# SPDX-License-Identifier: Apache-2.0
"""JSON for every HTTP error of the directory API and the metrics endpoint.

aiohttp answers its own errors (no such route 404, wrong method 405, body
too large 413, a handler's crash 500) in text/plain. An operator's client
or a probe then has to special-case them; ``json_errors`` turns each into
``{"error": "<what went wrong>"}`` with the same status (and its ``Allow``
header), as the directory's own errors already are. Signaling has its own
shape, ``{"error": {"code", "message"}}`` (transceiver/signaling.py).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return web.json_response({"error": f"{request.method} {request.path}: {exc.reason}"},
                                 status=exc.status, headers=headers)
    except Exception as exc:
        # Logged here with its traceback; the client gets the one line.
        log.exception("%s %s failed", request.method, request.path)
        reason = f"internal error ({type(exc).__name__}: {exc})"
        return web.json_response({"error": f"{request.method} {request.path}: {reason}"},
                                 status=500)
