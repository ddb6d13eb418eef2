"""Register the scheduler (kept in `kubeling.scheduler`) with the controller manager."""

from __future__ import annotations

from kubeling.controllers.manager import register
from kubeling.scheduler.scheduler import Scheduler

register("scheduler")(Scheduler)
