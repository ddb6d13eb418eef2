"""The default scheduler: assigns pending pods to nodes (see `scheduler.Scheduler`)."""
