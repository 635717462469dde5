"""The mitmproxy-facing side: what the addon admits and how an admitted request reaches the router.

The hooks (`mitm_addon`), their options (`addon_options`), the client key check (`client_auth`) and the
loopback relay that streams a routed answer back through mitmproxy (`relay`, `relay_server`). Nothing here
chooses an account or talks to the upstream: that is `accountpool.routing` and `accountpool.upstream`.
"""
