"""The fleet: a gateway DX routing a model to remote DX nodes (issue 16).

This package is the gateway's routing library, with no HTTP handlers of its own:
`state` (the JSON a node answers at GET /fleet/state, and its parser), `pick` (rendezvous
hashing with bounded load, power of two choices), `ejection` (a node's failures, backoff and
probe), `orca` (the `endpoint-load-metrics` header) and `members` (which nodes exist, from
URLs and DNS, and what each last said). The request path that uses them is
dxproxy/routing; the node side of /fleet/state is in dxproxy/api.
"""
