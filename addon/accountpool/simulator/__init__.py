"""The simulated OpenAI/Codex upstream that tests, the demo and the benchmarks run against.

A package of its own because it is no part of the proxy: nothing in `accountpool.proxy`, `routing`,
`upstream` or `storage` imports it. `server` holds it; `python -m accountpool.simulator` serves it in its
own process (`__main__`).
"""
