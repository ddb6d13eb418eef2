"""kubeling-dns: the cluster's DNS server (Kubernetes' DNS-based service discovery).

records.py answers names of the cluster domain from Services and EndpointSlices
(pure, testable on plain objects); server.py speaks DNS over UDP and TCP and
forwards other names upstream; main.py is the process.
"""
