"""The operator's status page: a read-only view of the pair, served by each agent on the API's port.

`pair` holds the pure rules (lag, what a failover would lose now, the history tail); `routes` adds the
page, its JSON and the peer poller to the API; `metrics` adds the series the alerting rules need.
Everything the page loads is in `static/`: no build step, nothing fetched from elsewhere.
"""
