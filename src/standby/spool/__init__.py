"""Call records a service hands over through a local spool, shipped to the current primary exactly once.

parse.py: one spool line -> a typed record or a typed rejection (pure).
plan.py: what the shipper does next, given what it observed (pure).
state.py: the shipper's durable offsets and its status for the agent (one encoder/decoder each).
shipper.py: the shell: tail the spool, insert idempotently, reconnect, set aside, report.
"""
