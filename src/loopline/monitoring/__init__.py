"""Monitoring: drift statistics, performance on feedback labels, range checks, the report.

``monitor(project)`` runs one check (see :mod:`loopline.monitoring.monitor`); ``latest_verdicts``
reads the newest one back (for Prometheus gauges and `loopline status`).
"""

from loopline.monitoring.drift import DriftReport, FeatureDrift, Profiler, compare, detect_drift, profile
from loopline.monitoring.monitor import EXIT_BREACH, MonitorResult, latest_verdicts, monitor, monitor_job

__all__ = [
    "EXIT_BREACH",
    "DriftReport",
    "FeatureDrift",
    "MonitorResult",
    "Profiler",
    "compare",
    "detect_drift",
    "latest_verdicts",
    "monitor",
    "monitor_job",
    "profile",
]
