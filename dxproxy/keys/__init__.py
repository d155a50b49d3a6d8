"""API keys and what they may do.

- `keyfile`: the generated key in the state folder (`api-key`, mode 0600)
- `store`: named keys (`keys.json`), their records, and the in-memory `KeyRing` the gate
  looks keys up in
- `limits`: rate limits per key (requests, tokens, concurrency), in memory or shared in Redis
"""
