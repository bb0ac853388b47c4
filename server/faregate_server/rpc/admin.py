"""The AdminService servicer: budgets, models and the spend ledger for operators.

Only principals granted `admin` may call it. Like the router's servicer it
only translates: it reads the budget store, the catalog and the ledger, and
maps errors through the same catalogue.
A limit set here holds until the budget's configured limit changes; a reset
of spend lasts until the window ends.
"""

from __future__ import annotations

import math

import grpc
from faregate.v1 import admin_pb2, admin_pb2_grpc, router_pb2

from faregate_server.config.schema import ConfigError
from faregate_server.errors import BudgetNotFound, ConfigInvalid, InvalidRequest
from faregate_server.reload import Reloader
from faregate_server.routing.gateway import Gateway
from faregate_server.rpc.status import abort
from faregate_server.security.auth import Authenticator, require_admin
from faregate_server.state.budgets import BudgetSnapshot
from faregate_server.state.store import StateStore

_MAX_NANO_USD = 2**63 - 1  # int64 on the wire
_DEFAULT_PAGE_SIZE = 100
_MAX_PAGE_SIZE = 1000

AdminContext = grpc.aio.ServicerContext[object, object]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        state: StateStore,
        gateway: Gateway,
        reloader: Reloader,
        authenticator: Authenticator,
    ) -> None:
        self._state = state
        self._gateway = gateway
        self._reloader = reloader
        self._auth = authenticator

    async def GetBudget(
        self, request: admin_pb2.GetBudgetRequest, context: AdminContext
    ) -> admin_pb2.GetBudgetResponse:
        try:
            self._require_admin(context)
            return admin_pb2.GetBudgetResponse(budget=await self._budget(request.key))
        except Exception as error:
            await abort(context, error, "")

    async def ListBudgets(
        self, request: admin_pb2.ListBudgetsRequest, context: AdminContext
    ) -> admin_pb2.ListBudgetsResponse:
        try:
            self._require_admin(context)
            budgets = [await self._budget(key) for key in self._gateway.catalog.config.budgets]
        except Exception as error:
            await abort(context, error, "")
        return admin_pb2.ListBudgetsResponse(budgets=budgets)

    async def UpdateBudget(
        self, request: admin_pb2.UpdateBudgetRequest, context: AdminContext
    ) -> admin_pb2.UpdateBudgetResponse:
        try:
            self._require_admin(context)
            snapshot = await self._state.budget(request.key)
            change = request.WhichOneof("change")
            if change == "set_limit_nano_usd":
                if request.set_limit_nano_usd < 0:
                    raise InvalidRequest({"set_limit_nano_usd": "must not be negative"})
                await self._state.update_budget(
                    request.key, set_limit_nano_usd=request.set_limit_nano_usd
                )
            elif change == "top_up_nano_usd":
                limit = snapshot.limit_nano_usd + request.top_up_nano_usd
                if request.top_up_nano_usd <= 0 or limit > _MAX_NANO_USD:
                    problem = f"must be positive and keep the limit at most {_MAX_NANO_USD}"
                    raise InvalidRequest({"top_up_nano_usd": problem})
                await self._state.update_budget(
                    request.key, top_up_nano_usd=request.top_up_nano_usd
                )
            elif change == "reset_spend" and request.reset_spend:
                await self._state.update_budget(request.key, reset_spend=True)
            else:
                raise InvalidRequest({"change": "set one of the changes"})
            return admin_pb2.UpdateBudgetResponse(budget=await self._budget(request.key))
        except Exception as error:
            await abort(context, error, "")

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: AdminContext
    ) -> admin_pb2.ListModelsResponse:
        try:
            self._require_admin(context)
            return self._models()
        except Exception as error:
            await abort(context, error, "")

    def _models(self) -> admin_pb2.ListModelsResponse:
        models = []
        for deployment in self._gateway.catalog.deployments.values():
            config = deployment.config
            pool = deployment.pool.statistics()
            latency = deployment.latency
            models.append(
                admin_pb2.ModelState(
                    name=config.name,
                    provider=config.provider.value,
                    version=config.version,
                    input_nano_usd_per_mtok=config.price.input_nano_usd_per_mtok,
                    output_nano_usd_per_mtok=config.price.output_nano_usd_per_mtok,
                    quality=config.quality,
                    workers=pool.workers,
                    in_use=pool.in_use,
                    queue_depth=pool.waiting,
                    breaker_state=deployment.breaker.state.value,
                    ewma_latency_s=latency.ewma_total_s or 0.0,
                    ewma_ttft_s=latency.ewma_ttft_s or 0.0,
                )
            )
        return admin_pb2.ListModelsResponse(models=models)

    async def ListSpend(
        self, request: admin_pb2.ListSpendRequest, context: AdminContext
    ) -> admin_pb2.ListSpendResponse:
        try:
            self._require_admin(context)
            page_size = request.page_size or _DEFAULT_PAGE_SIZE
            if not 0 < page_size <= _MAX_PAGE_SIZE:
                raise InvalidRequest({"page_size": f"must be between 1 and {_MAX_PAGE_SIZE}"})
            before = None
            if request.page_token:
                token = request.page_token
                if not (token.isascii() and token.isdecimal() and 0 < int(token) <= _MAX_NANO_USD):
                    raise InvalidRequest({"page_token": "is not a token this service gave"})
                before = int(token)
            found = await self._state.spend(
                request.budget_key, request.agent, page_size + 1, before
            )
        except Exception as error:
            await abort(context, error, "")
        page = found[:page_size]
        entries = [
            admin_pb2.SpendEntry(
                request_id=record.request_id,
                time_unix_s=record.time_s,
                budget_key=record.budget_keys[0],
                agent=record.agent,
                model=record.model,
                usage=router_pb2.Usage(
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                    cached_input_tokens=record.cached_input_tokens,
                    cache_write_input_tokens=record.cache_write_input_tokens,
                    cache_write_1h_input_tokens=record.cache_write_1h_input_tokens,
                    reasoning_tokens=record.reasoning_tokens,
                ),
                reserved_nano_usd=record.reserved_nano_usd,
                cost_nano_usd=record.cost_nano_usd,
                outcome=record.outcome,
                additional_budget_keys=record.budget_keys[1:],
                route=record.route,
                model_version=record.model_version,
                attempts=record.attempts,
                principal=record.principal,
                usage_flaw=record.usage_flaw,
                reported_usage=record.reported_usage,
                overrun_nano_usd=max(record.cost_nano_usd - record.reserved_nano_usd, 0),
            )
            for _, record in page
        ]
        next_token = str(page[-1][0]) if len(found) > page_size else ""
        return admin_pb2.ListSpendResponse(entries=entries, next_page_token=next_token)

    async def ReloadConfig(
        self, request: admin_pb2.ReloadConfigRequest, context: AdminContext
    ) -> admin_pb2.ReloadConfigResponse:
        try:
            self._require_admin(context)
            try:
                applied = self._reloader.reload_or_raise()
            except ConfigError as refused:
                path = str(self._reloader.path)
                problem = str(refused).removeprefix(f"{path}: ")  # named once, not twice
                raise ConfigInvalid(path, problem) from None
            return admin_pb2.ReloadConfigResponse(applied=applied)
        except Exception as error:
            await abort(context, error, "")

    def _require_admin(self, context: AdminContext) -> None:
        """Operators only: an admin principal sees every budget and all spend."""
        require_admin(self._auth.authenticate(context))

    async def _budget(self, key: str) -> admin_pb2.Budget:
        budget = self._gateway.catalog.config.budgets.get(key)
        if budget is None:
            raise BudgetNotFound(key)
        snapshot: BudgetSnapshot = await self._state.budget(key)
        return admin_pb2.Budget(
            key=key,
            limit_nano_usd=snapshot.limit_nano_usd,
            spent_nano_usd=snapshot.spent_nano_usd,
            reserved_nano_usd=snapshot.reserved_nano_usd,
            remaining_nano_usd=snapshot.remaining_nano_usd,
            window=budget.window.value,
            resets_at_unix_s=0.0 if math.isinf(snapshot.resets_at_s) else snapshot.resets_at_s,
        )
