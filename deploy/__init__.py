"""Cluster deployment: Kubernetes and KServe manifests for the model repository `make repo` wrote.

Imports `build` (the backend records, config parsing), the CLI kit (`client.cli`) and the error base
(`segformer.errors`), nothing else of the project; nothing imports it. `python -m deploy.manifests`
(`make deploy-manifests`) writes deploy/k8s/; deploy/overlays/ holds the hand-written kustomize overlays that
patch it.
"""
