"""accountpool: several OpenAI API keys and ChatGPT/Codex logins behind one mitmproxy endpoint.

The subpackages are the layers of docs/DESIGN.md ("Where things live"), each importing only from its own
and those below it: `proxy` (mitmproxy's hooks), `admin` (the operator's command), `routing`, `translation`,
`upstream`, `storage`, then the modules at the top of the package that every layer uses (`models`, the data
shapes; `human_time`; `forecast`, pure quota arithmetic). `simulator` is the fake upstream the tests, the demo
and the benchmarks use: it imports nothing else of the package, and only `admin` imports it.
"""
