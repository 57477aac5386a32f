"""The Slack edge: the bolt app and its adapters (HTTP, Socket Mode), the console stand-in,
Block Kit renderers, message texts, and the notifier — the one place that writes to Slack.

Nothing here decides what a command means; that is `handlers`' job, reached through the
`CommandHandler` protocol in `bot.ports`.
"""
