"""accountpool: several OpenAI API keys and ChatGPT/Codex logins behind one mitmproxy endpoint.

The subpackages are the layers of docs/DESIGN.md ("Where things live"), each importing only from those
below it: `proxy` and `admin` (the ways in: mitmproxy's hooks, the operator's command), `routing`,
`upstream` and `translation`, `storage`, and the shapes every layer shares at the top (`models`,
`human_time`, `forecast`). `simulator` is the fake upstream the tests, the demo and the benchmarks use.
"""
