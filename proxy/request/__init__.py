"""The request path: routing a client request, the attempts on leased sessions, streaming the
answer back, and reading what the upstream says (Retry-After, rate-limit headers, usage)."""
