"""Which engine replica serves a request, and which models run at all.

- `router`: `Router.acquire(model)` picks the ready replica with the fewest requests in
  flight, or queues the request (bounded, fair across keys, with a timeout)
- `loader`: which models run: loaded at start or on demand, unloaded when idle, taking
  turns within the memory budget
- `eviction`: the loader's arithmetic as pure functions (what fits, which models to unload)
- `wait`: one wait that sends notices while it lasts (a model loading, a queue)
- `live`: `Live`, the config and catalog every request reads, swapped whole by a reload
- `upstream`: the connections to the engines (one pool) and the one safe retry
- `gateway`: a gateway's fleet (dxproxy/fleet's Membership for the config's `fleet:`), its
  connections to the nodes and its counters

Nothing here knows the HTTP front: the handlers in dxproxy.api call in with plain values.
"""
