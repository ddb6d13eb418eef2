"""Node-level building blocks for the kubelet: OCI images built from Debian packages,
a containerd configuration and process helper, and the bridge CNI configuration."""
