"""`POST /v1/aodh/<token>`: the Aodh webhook, bound to the daemon's HTTP app.

`osel.aodh.handle_webhook` decides; this module reads the request, commits
what it returns through the daemon's pipeline (`Daemon.process`, the same
unit of work as a batch from RabbitMQ) and only then answers 2xx: Aodh
retries nothing, so an answer must mean the change is in the store.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from osel.aodh import KeystoneCheck, KeystoneTokenCheck, handle_webhook
from osel.backoff import describe_error
from osel.config import Settings
from osel.neutron import NeutronAPI
from osel.pipeline import Item, Stats
from osel.store.store import unavailable

log = logging.getLogger(__name__)

Process = Callable[[list[Item]], Awaitable[Stats]]

_ANSWER = {
    "type": "object",
    "properties": {
        "message_id": {"type": "string"},
        "event_type": {"type": "string"},
        "outcome": {"type": "string"},
        "error": {"type": "string"},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": _ANSWER}}}
    for code, text in {
        200: "Committed (outcome: recorded, no_change, ignored, duplicate, deferred, "
        "quarantined), or the resource is gone (outcome: gone)",
        400: "Not JSON, or not an Aodh event-alarm notification",
        401: "Wrong path token, or a Keystone token missing, invalid or not accepted",
        403: "The event, or its resource in Neutron, is another project's than the token's",
        404: "The webhook is off (no http.aodh_token, no http.keystone_validate)",
        413: "Body too large",
        422: "An event alarm whose event osel cannot interpret",
        503: "Keystone or Neutron unavailable, or the store cannot commit",
    }.items()
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "Aodh's alarm notification (aodh/notifier/rest.py)",
                "properties": {
                    "alarm_name": {"type": "string"},
                    "alarm_id": {"type": "string"},
                    "severity": {"type": "string"},
                    "previous": {"type": "string"},
                    "current": {"type": "string"},
                    "reason": {"type": "string"},
                    "reason_data": {"type": "object"},
                },
            }
        }
    },
}


def keystone_auth_url(settings: Settings) -> tuple[str, bool | str]:
    """Keystone's URL and TLS verification (a CA file or a bool) for osel's own cloud."""
    os_ = settings.openstack
    if os_.auth is not None:
        return os_.auth.auth_url, (os_.cacert or True) if os_.verify else False
    import openstack.config

    try:
        cloud = openstack.config.OpenStackConfig().get_one(cloud=os_.cloud)
    except Exception as exc:  # openstacksdk's config errors have no common base
        raise SystemExit(
            f"http.keystone_validate: cannot read clouds.yaml entry openstack.cloud={os_.cloud!r} "
            f"to find Keystone ({type(exc).__name__}); fix openstack.cloud or "
            "OS_CLIENT_CONFIG_FILE"
        ) from None
    auth_url = (cloud.auth or {}).get("auth_url")
    if not auth_url:
        raise SystemExit(
            f"http.keystone_validate: clouds.yaml entry {os_.cloud!r} has no auth_url; add it"
        )
    if not os_.verify or cloud.config.get("verify") is False:
        return str(auth_url), False
    return str(auth_url), os_.cacert or cloud.config.get("cacert") or True


def keystone_check(settings: Settings) -> KeystoneCheck | None:
    if not settings.http.keystone_validate:
        return None
    url, verify = keystone_auth_url(settings)
    tls: bool | ssl.SSLContext = (
        ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    )
    return KeystoneTokenCheck(
        url,
        list(settings.http.keystone_users),
        verify=tls,
        timeout=settings.openstack.timeout_seconds,
    )


def aodh_routes(
    settings: Settings, neutron: NeutronAPI, process: Process
) -> Callable[[FastAPI], None]:
    """The route installer for `osel.http.app.Context.extra_routes`."""
    token = settings.http.aodh_token
    secret = token.get_secret_value() if token is not None else None
    check = keystone_check(settings)
    max_bytes = settings.service.max_message_bytes

    def install(app: FastAPI) -> None:
        @app.post(
            "/v1/aodh/{token}",
            summary="Aodh event-alarm notifications (one token per project)",
            responses=_RESPONSES,
            openapi_extra={"requestBody": _REQUEST_BODY},
            response_class=JSONResponse,
        )
        async def aodh_webhook(token: str, request: Request) -> JSONResponse:
            body = await request.body()
            result = await handle_webhook(
                token,
                request.headers,
                body,
                secret=secret,
                keystone_check=check,
                neutron=neutron,
                max_bytes=max_bytes,
            )
            if result.body is None:
                return JSONResponse(result.answer, status_code=result.status)
            try:
                stats = await process([Item(result.body, "aodh", "")])
            except Exception as exc:
                # one line, without a traceback, while the store is simply away
                log.warning(
                    "Aodh webhook: could not commit %s: %s",
                    result.answer,
                    describe_error(exc),
                    exc_info=None if unavailable(exc) else exc,
                )
                return JSONResponse(
                    {**result.answer, "error": "could not commit the change; see osel's log"},
                    status_code=503,
                )
            outcome = next(iter(stats.outcomes), "")
            return JSONResponse({**result.answer, "outcome": outcome}, status_code=200)

        @app.post("/v1/aodh", include_in_schema=False)
        @app.post("/v1/aodh/", include_in_schema=False)
        async def aodh_webhook_without_token() -> JSONResponse:
            return JSONResponse({"error": "unauthorized"}, status_code=401)

    return install
