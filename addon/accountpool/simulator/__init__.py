"""The simulated OpenAI/Codex upstream that tests, the demo and the benchmarks run against.

A package of its own because it is no part of the proxy: nothing in `accountpool.proxy`, `routing`,
`upstream` or `storage` imports it. `server` is the HTTP server, its Python and `/_sim/` control API and
its authentication; `answers` what the model says in each wire format; `faults` the scripted failures;
`logins` and `usage` the credentials it knows and the usage they report; `replies` the answer shape they
share. `python -m accountpool.simulator` serves it in its own process (`__main__`).
"""
