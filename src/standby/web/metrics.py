"""Series the alerting rules (etc/prometheus/standby-rules.yml) need beyond the API's own: read at scrape
time from the agent, never stale."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from standby.model import DbState
from standby.web.pair import Exposure, failover_risk
from standby.web.view import node_facts

if TYPE_CHECKING:
    from standby.agent.node import Agent


class PairCollector:
    def __init__(self, a: Agent) -> None:
        self.a = a

    def collect(self) -> Iterator[Metric]:
        a = self.a
        info = GaugeMetricFamily("standby_info", "this agent's pair and settings (always 1)",
                                 labels=["cluster", "node", "mode", "durability"])
        info.add_metric([a.cfg.cluster, a.node, a.cfg.mode.value, a.cfg.replication.durability.value], 1.0)
        yield info
        f = node_facts(a)
        yield GaugeMetricFamily("standby_eligible", "1 if this node is a standby that would promote by itself now",
                                value=float(f.db is DbState.STANDBY and f.eligible))
        if f.lag_bytes is not None:
            yield GaugeMetricFamily("standby_lag_bytes", "WAL the standby lacks, in bytes, as this node sees the pair",
                                    value=float(f.lag_bytes))
        yield GaugeMetricFamily("standby_lag_threshold_bytes", "alerts.lag_threshold_bytes",
                                value=float(a.cfg.alerts.lag_threshold_bytes))
        risk = failover_risk(f)
        g = GaugeMetricFamily("standby_failover_exposure", "1 for what a failover now would lose", labels=["exposure"])
        for e in Exposure:
            g.add_metric([e.value], float(e is risk.exposure))
        yield g
        m = a.maintenance.current
        yield GaugeMetricFamily("standby_maintenance_seconds", "how long automatic failover has been suspended (0: it is not)",
                                value=max(0.0, time.time() - m.since) if a.suspended and m is not None else 0.0)
