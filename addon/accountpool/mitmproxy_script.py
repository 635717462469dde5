"""Entry point for `mitmdump -s "$(accountpool addon-path)"` (and mitmweb).

mitmproxy loads this file by path and reloads it on change; the logic lives in the installed
`accountpool` package so a reload picks up a consistent version of everything.
"""

from accountpool.proxy.mitm_addon import AccountPool

addons = [AccountPool()]
