"""Controllers that keep desired state (ReplicaSet, Deployment, DaemonSet, Job,
CronJob, StatefulSet, PersistentVolume binding and local-path provisioning, PVC protection,
EndpointSlice, node lifecycle, garbage collector) and the scheduler's home in the
master process. Each talks to the API only through the client, so any of them can
also run as its own process."""
