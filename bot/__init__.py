"""Ephem: ephemeral environments from Slack.

`bot` is the runtime kernel: settings, domain values, the state store, the executor, the Slack
edge and the composition root (`bot.cli.app`) that wires `handlers` and `pipelines` to them.
"""
