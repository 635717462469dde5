"""The operator's side: the `accountpool` command and what it shares with the dashboard.

The command (`cli`), adding and refreshing accounts (`account_admin`), the forecast table
(`forecast_report`) and the one-machine demo (`demo`, `local_ports`). Never imported by the proxy.
"""
