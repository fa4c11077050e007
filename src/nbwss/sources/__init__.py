"""Notification producers: what feeds the outbox besides `nbwss notify`.

`mapping` is the pure core (API records -> notifications, and what to report when);
`restclient` talks to the local NetBackup REST API; `poller` runs the polls inside
`nbwss run` and commits each decision with its outbox insert.
"""
