"""Use case: the requester withdraws a request that is still pending."""

from __future__ import annotations

from jitaccess.domain.errors import Conflict, Forbidden, JitAccessError, NotFound
from jitaccess.domain.model import Request, RequestState
from jitaccess.ports import Clock, UnitOfWork
from jitaccess.services.context import audit, refuse


def cancel_request(
    uow: UnitOfWork, clock: Clock, *, request_id: str, principal: str, comment: str = ""
) -> Request:
    now = clock.now()
    request = uow.requests.get(request_id, for_update=True)
    try:
        if request is None:
            raise NotFound(f"no request {request_id}")
        if request.requester != principal:
            raise Forbidden("only the requester can cancel a request", rule="not-the-requester")
        if request.state is not RequestState.PENDING:
            raise Conflict(f"request {request.id} is {request.state.value}, not pending")
    except JitAccessError as error:
        raise refuse(uow, now, principal, "request.cancel", request_id, error) from None
    request.cancel(now)
    uow.requests.save(request)
    audit(uow, now, principal, "request.cancelled", request.id, comment=comment)
    uow.commit()
    return request
