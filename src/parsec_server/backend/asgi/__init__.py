"""The transport: how requests reach the domain components.

`server` runs uvicorn (workers, sockets), `limits` bounds connections whose request is not
complete (deadline, per-address cap), `app` is the ASGI entry, `routes` the plain HTTP
pages, `websocket` the websocket seen through ASGI, `connection` one client's handshake and
command loop, `handshake` who the peer is, `dispatch` frame decoding into typed requests,
`commands` the command tables.

Domain modules never import this package: they see a connection only through
`backend.client_context` (the peer's identity, `HandshakeRefusal`, `CLOSE_CONNECTION`) and
receive events through `backend.connections`.
"""
