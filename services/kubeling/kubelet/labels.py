"""Labels and annotations the kubelet puts on sandboxes and containers.

They are the kubelet's memory: after a restart it rebuilds what it runs from these
(the same keys upstream kubelets use, so tools such as crictl show familiar names).
"""

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
# Annotations on containers.
CONTAINER_HASH = "io.kubernetes.container.hash"
RESTART_COUNT = "io.kubernetes.container.restartCount"
INIT_CONTAINER = "kubeling.io/init-container"
MANAGED_BY = "kubeling.io/managed-by"
MANAGER = "kubeling-kubelet"
