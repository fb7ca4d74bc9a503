"""The job on Kubernetes: MindCluster's AscendJob or a Volcano Job.

`manifests` renders the objects from the inventory (dicts, dumped as YAML: every inventory
value is data, never shell text); `apply` creates, follows and deletes them through the
Kubernetes Python client. No API server runs where this project is tested: the manifests are
validated offline against the Kubernetes and CRD schemas, and the apply path is tested against
a fake at the client boundary only.
"""
