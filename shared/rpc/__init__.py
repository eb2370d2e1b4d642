"""The mesh's gRPC plumbing, apart from the plain building blocks in ``shared/``.

- ``server``: ``create_server`` — health, reflection (``reflection``), the server chain
  applied once per method, Exchange served from the wrapped handlers, graceful stop.
- ``channels``: ``ChannelPool`` — one channel per target, the client chain, transports and
  typed clients (``pool.client(MemoryClient, target)``).
- ``client``: ``Call``, ``ClientInterceptor``, ``ServiceClient`` (base of the typed
  clients), ``UnaryTransport``.
- ``exchange_client`` / ``exchange_server``: logical calls multiplexed on long-lived
  Exchange streams.
- ``chain``: the server interceptor shape and ``wrap_method``; ``filters``: bypass predicates.
- ``interceptors``: one module per interceptor; both chains declared in its ``__init__``.
"""
