"""The edge around the handlers: what every request passes through, outermost first.

- `access`: request ids, the access log line, metrics per request
- `errors`: `ApiError` and the error middleware (every failure in the caller's dialect)
- `auth`: the key gate and the rate-limit middleware
- `door`: the door's middlewares (Host, CORS, client address, body checks)
- `listener`: the raw connection guard (connection limits, header timeout)
- `metrics`: the Prometheus registry and `/metrics` (`fleet_metrics`: the fleet's part)
- `loadreport`: the `endpoint-load-metrics` header (ORCA) a gateway asks a node for
- `early`: a streamed reply started while the model loads
- `state`: every typed key on the app and on a request (`web.AppKey`, `web.RequestKey`)
"""
