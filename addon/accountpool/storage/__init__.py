"""What is remembered and shared between processes: `pool.db`, `pool.secrets`, and the proxy's picture of them.

The schema (`schema`), queries (`store`), the secrets file (`secrets_store`), default paths (`paths`), the one
writer thread (`metrics_writer`), the proxy's in-memory pool (`pool_view`), the usage history (`usage_history`)
and the cross-process trial claim (`trial_claims`). The only subpackage that opens SQLite.
"""
