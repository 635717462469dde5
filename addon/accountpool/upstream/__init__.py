"""The upstream side: one attempt's request, the outbound client, credentials' refresh, and reading answers.

Where an attempt goes (`request_paths`, `upstream_request`), the hot path's HTTP client (`upstream_client`),
token refresh (`oauth`, `token_rotation`, `jwt_claims`), and what an answer says: its failure class
(`classify`), its usage headers (`usage_headers`), its stream's usage and in-band errors (`sse_usage`), and the
background usage probe (`usage_sweep`). It decides nothing about which account to use.
"""
