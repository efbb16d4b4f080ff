"""The Kubernetes and KServe objects of one pod group, as plain dicts (written as YAML by deploy.manifests).

Plain Deployment path: Deployment (NGC Triton, explicit model control loading only the group's models, probes on
/v2/health/ready and /v2/health/live, a startup probe long enough for CUDA-graph capture, LD_PRELOAD of the
LayerNorm plugin where a row needs it, /dev/shm in memory for the python backend), Service (HTTP, gRPC over
h2c, metrics), HorizontalPodAutoscaler on Triton's average queue time per request (a custom metric the
Prometheus adapter derives from nv_inference_queue_duration_us / nv_inference_request_success, rule in
`prometheus_adapter_rules`), PodMonitor for :8002/metrics, PodDisruptionBudget. KServe path: an
InferenceService (v1beta1) with the `kserve-tritonserver` runtime, storageUri, GPU resources, min/max replicas
and scaling on concurrency.
"""
from __future__ import annotations

from .groups import DATA_DIR, PLUGIN_FILE, REPOSITORY_DIR, Group

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PART_OF = "segformer"
QUEUE_METRIC = "triton_queue_avg_us"  # the adapter's name for Triton's average queue time per request (us)
DIGEST_KEY = "segformer.io/repository-sha256"  # pod annotation: a new repository rolls the pods


def labels(g: Group) -> dict:
    return {"app.kubernetes.io/name": g.name, "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/component": "triton"}


def selector(g: Group) -> dict:
    return {"app.kubernetes.io/name": g.name}


def triton_args(g: Group, repository: str = REPOSITORY_DIR) -> list[str]:
    """tritonserver's arguments; --model-repository stays first (the object-storage overlay patches args/0)."""
    args = [f"--model-repository={repository}", "--model-control-mode=explicit"]
    args += [f"--load-model={m.name}" for m in g.models]
    args += ["--strict-readiness=true", "--exit-on-error=false", f"--http-port={PORTS['http']}",
             f"--grpc-port={PORTS['grpc']}", f"--metrics-port={PORTS['metrics']}", "--allow-metrics=true",
             f"--allow-gpu-metrics={'true' if g.kind == 'gpu' else 'false'}"]
    return args


def resources(g: Group) -> dict:
    if g.kind == "gpu":
        return {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"}}
    cpu = max(2, 2 * sum(m.instances for m in g.models))
    return {"requests": {"cpu": str(cpu), "memory": "8Gi"}, "limits": {"memory": "12Gi"}}


def env(g: Group, repository: str = REPOSITORY_DIR) -> list[dict]:
    out = []
    if g.plugin:  # TensorRT needs the plugin's creators registered before a plan that uses them is deserialised
        out.append({"name": "LD_PRELOAD", "value": f"{repository}/{PLUGIN_FILE}"})
    return out


def _probe(path: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 5}


def container(g: Group) -> dict:
    c = {"name": "tritonserver", "image": g.image, "imagePullPolicy": "IfNotPresent",
         "command": ["tritonserver"], "args": triton_args(g),
         "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS.items()],
         # startup: torch.compile + CUDA-graph capture (GPU fast path) or TensorRT warm-up take minutes
         "startupProbe": _probe("/v2/health/ready", 10, 60),
         "readinessProbe": _probe("/v2/health/ready", 5, 3),
         "livenessProbe": _probe("/v2/health/live", 10, 3),
         "resources": resources(g),
         "volumeMounts": [{"name": "model-store", "mountPath": DATA_DIR, "readOnly": True},
                          {"name": "dshm", "mountPath": "/dev/shm"}],
         "securityContext": {"allowPrivilegeEscalation": False}}
    if env(g):
        c["env"] = env(g)
    return c


def deployment(g: Group, replicas: int, claim: str) -> dict:
    pod = {"metadata": {"labels": labels(g), "annotations": {DIGEST_KEY: g.digest}},
           "spec": {"containers": [container(g)], "terminationGracePeriodSeconds": 30,
                    "volumes": [{"name": "model-store", "persistentVolumeClaim": {"claimName": claim,
                                                                                 "readOnly": True}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]}}
    if g.kind == "gpu":
        pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": g.name, "labels": labels(g)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector(g)},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": pod}}


def service(g: Group) -> dict:
    ports = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in PORTS.items()]
    ports[1]["appProtocol"] = "kubernetes.io/h2c"  # gRPC: HTTP/2 without TLS, so meshes and L7 balancers split it
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": g.name, "labels": labels(g)},
            "spec": {"type": "ClusterIP", "selector": selector(g), "ports": ports}}


def hpa(g: Group, low: int, high: int, queue_us: int) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": g.name, "labels": labels(g)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": g.name},
                     "minReplicas": low, "maxReplicas": high,
                     "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                                           "target": {"type": "AverageValue",
                                                                      "averageValue": str(queue_us)}}}],
                     # scale up at once, down slowly: a GPU pod takes minutes to warm up
                     "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                                  "scaleDown": {"stabilizationWindowSeconds": 300}}}}


def pod_monitor(g: Group) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": g.name, "labels": labels(g)},
            "spec": {"selector": {"matchLabels": selector(g)},
                     "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}


def pdb(g: Group) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": g.name, "labels": labels(g)},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(g)}}}


def volume_claim(claim: str, size_gi: int) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "labels": {"app.kubernetes.io/part-of": PART_OF}},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": f"{size_gi}Gi"}}}}


def prometheus_adapter_rules() -> dict:
    """The prometheus-adapter rule that turns Triton's counters into the HPA's per-pod metric (average
    microseconds a request waited in the queue over the last minute)."""
    rule = f"""rules:
- seriesQuery: 'nv_inference_queue_duration_us{{namespace!="",pod!=""}}'
  resources:
    overrides:
      namespace: {{resource: namespace}}
      pod: {{resource: pod}}
  name:
    as: "{QUEUE_METRIC}"
  metricsQuery: >-
    sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>)
    / clamp_min(sum(rate(nv_inference_request_success{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>), 1)
"""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "segformer-prometheus-adapter-rules", "labels": {"app.kubernetes.io/part-of": PART_OF}},
            "data": {"config.yaml": rule}}


def inference_service(g: Group, storage_uri: str, low: int, high: int) -> dict:
    model = {"modelFormat": {"name": "triton"}, "runtime": "kserve-tritonserver",
             "runtimeVersion": g.runtime_version, "storageUri": storage_uri, "protocolVersion": "v2",
             # KServe's storage initializer puts the repository at /mnt/models
             "args": triton_args(g, "/mnt/models")[1:],
             "resources": resources(g)}
    if g.plugin:
        model["env"] = env(g, "/mnt/models")
    predictor = {"minReplicas": low, "maxReplicas": high, "scaleMetric": "concurrency",
                 "scaleTarget": g.concurrency, "model": model}
    if g.kind == "gpu":
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": g.name, "labels": labels(g), "annotations": {DIGEST_KEY: g.digest}},
            "spec": {"predictor": predictor}}
