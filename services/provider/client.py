"""Typed client of the provider service.

    provider = pool.client(ProviderClient, settings.provider.target())
    response = await provider.generate(provider_pb2.GenerateRequest(messages=[...]))
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from clawmesh.provider.v1 import provider_pb2
from clawmesh.shared.rpc.client import ServiceClient


class ProviderClient(ServiceClient):
    """``clawmesh.provider.v1.ProviderService`` as domain calls."""

    SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]

    async def generate(self, request: provider_pb2.GenerateRequest) -> provider_pb2.GenerateResponse:
        return await self.unary("Generate", request)

    def generate_stream(self, request: provider_pb2.GenerateStreamRequest
                        ) -> AsyncIterator[provider_pb2.GenerateStreamResponse]:
        return self.stream("GenerateStream", request)

    async def backends(self) -> provider_pb2.ListBackendsResponse:
        return await self.unary("ListBackends", provider_pb2.ListBackendsRequest())
