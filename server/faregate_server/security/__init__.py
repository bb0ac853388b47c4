"""Who may call: API keys, mTLS identities, per-principal limits and TLS credentials."""
