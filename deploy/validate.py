"""Offline checks of generated manifests: Kubernetes objects against the Kubernetes OpenAPI schemas
(`kubernetes-validate`), KServe objects against the KServe SDK's models (every field name known, every value of
its declared type), and the references between objects (selectors, ports, scale targets, claims).

    python -m deploy.validate deploy/k8s          # or any folder / files of YAML (e.g. `kubectl kustomize` output)

Needs the `deploy` extra (pip install -e ".[deploy]"); says so when it is missing.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from client.cli import run
from segformer.errors import ProjectError

KUBERNETES_VERSION = "1.32"  # the oldest minor release the manifests promise to load on
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str,
               "date": str}


class ValidatorMissing(ProjectError, RuntimeError):
    pass


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        raise ValidatorMissing("kubernetes-validate is not installed: pip install -e \".[deploy]\"") from None
    return kubernetes_validate


def _model_class(name: str):
    try:
        import kserve.models
        import kubernetes.client.models
    except ImportError:
        raise ValidatorMissing("the KServe SDK is not installed: pip install -e \".[deploy]\"") from None
    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def check_typed(value, typ: str, path: str, problems: list[str]) -> None:
    """`value` (parsed YAML) against an OpenAPI-generated model type name of the KServe / Kubernetes SDKs."""
    typ = typ.strip()
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", typ)
    if m:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            check_typed(v, m.group(1), f"{path}[{i}]", problems)
        return
    m = re.fullmatch(r"(?:dict\(str, *(.+)\)|Dict\[str, *(.+)\])", typ)
    if m:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        for k, v in value.items():
            check_typed(v, m.group(1) or m.group(2), f"{path}.{k}", problems)
        return
    if typ in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[typ]) and not (typ in ("int", "float") and isinstance(value, bool))
        if not ok:
            problems.append(f"{path}: expected {typ}, got {value!r}")
        return
    cls = _model_class(typ)
    if cls is None:
        problems.append(f"{path}: the SDK has no type {typ}")
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {typ} mapping, got {type(value).__name__}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: not a field of {typ}")
            continue
        if v is not None:
            check_typed(v, cls.openapi_types[by_json[key]], f"{path}.{key}", problems)


KSERVE_KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def check_object(obj: dict) -> list[str]:
    """Problems of one object (empty when valid)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    name = f"{key[1]}/{(obj.get('metadata') or {}).get('name', '?')}"
    if key in KSERVE_KINDS:
        problems: list[str] = []
        check_typed(obj, KSERVE_KINDS[key], name, problems)
        return problems
    if key in CRD_KINDS:
        return _check_monitor(obj, name) if "Monitor" in key[1] else []
    kv = _kubernetes_validate()
    try:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        return [f"{name}: {str(exc).splitlines()[0]} (at {'/'.join(map(str, exc.path))})"]
    except kv.SchemaNotFoundError:
        return [f"{name}: no Kubernetes {KUBERNETES_VERSION} schema for {key[0]} {key[1]}"]
    return []


def _check_monitor(obj: dict, name: str) -> list[str]:
    """prometheus-operator's monitors have no schema in either package: the fields the operator needs."""
    spec = obj.get("spec") or {}
    eps = spec.get("podMetricsEndpoints") or spec.get("endpoints")
    problems = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append(f"{name}: spec.selector.matchLabels is empty (it would scrape nothing or everything)")
    if not eps or not all(e.get("port") for e in eps):
        problems.append(f"{name}: every endpoint needs a named port")
    return problems


def cross_references(objs: list[dict]) -> list[str]:
    """Selectors that select the pods, ports that exist, scale targets and claims that are defined."""
    by = {}
    for o in objs:
        by.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    problems = []
    pods = {n: d["spec"]["template"] for n, d in by.get("Deployment", {}).items()}

    def selected(sel: dict, what: str):
        hits = [n for n, p in pods.items() if sel and sel.items() <= p["metadata"].get("labels", {}).items()]
        if not hits:
            problems.append(f"{what}: its selector {sel} matches no Deployment's pods")
        return hits

    for n, s in by.get("Service", {}).items():
        for d in selected(s["spec"]["selector"], f"Service/{n}"):
            names = {p["name"] for c in pods[d]["spec"]["containers"] for p in c.get("ports", [])}
            problems += [f"Service/{n}: targetPort {p['targetPort']} is no port of Deployment/{d}"
                         for p in s["spec"]["ports"] if p["targetPort"] not in names]
    for kind in ("PodMonitor", "PodDisruptionBudget"):
        for n, o in by.get(kind, {}).items():
            hits = selected(o["spec"]["selector"]["matchLabels"], f"{kind}/{n}")
            for d in hits if kind == "PodMonitor" else []:
                names = {p["name"] for c in pods[d]["spec"]["containers"] for p in c.get("ports", [])}
                problems += [f"PodMonitor/{n}: port {e['port']} is no port of Deployment/{d}"
                             for e in o["spec"]["podMetricsEndpoints"] if e["port"] not in names]
    for n, h in by.get("HorizontalPodAutoscaler", {}).items():
        ref = h["spec"]["scaleTargetRef"]
        if ref["name"] not in by.get(ref["kind"], {}):
            problems.append(f"HorizontalPodAutoscaler/{n}: scale target {ref['kind']}/{ref['name']} is not defined")
    for d, p in pods.items():
        for v in p["spec"].get("volumes", []):
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in by.get("PersistentVolumeClaim", {}):
                problems.append(f"Deployment/{d}: volume claim {claim} is not defined")
    return problems


def load(paths: list[Path]) -> list[dict]:
    files = [f for p in paths for f in (sorted(p.rglob("*.yaml")) if p.is_dir() else [p])]
    return [o for f in files for o in yaml.safe_load_all(f.read_text()) if o]


def validate(objs: list[dict]) -> list[str]:
    problems = [p for o in objs for p in check_object(o)]
    return problems + cross_references([o for o in objs if o.get("kind") != "Kustomization"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.validate",
                                 description="Validate manifests offline: Kubernetes schemas, KServe SDK models, "
                                             "references between objects.")
    ap.add_argument("paths", nargs="+", type=Path, help="YAML files or folders")
    args = ap.parse_args(argv)
    return run(lambda: _main(args))


class ManifestInput(ProjectError, ValueError):
    """A path that does not exist, or a file that is not YAML."""


def _main(args) -> int:
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        raise ManifestInput(f"no such file or folder: {missing[0]}")
    try:
        objs = load(args.paths)
    except yaml.YAMLError as exc:
        raise ManifestInput(f"not YAML: {str(exc).splitlines()[0]}") from None
    problems = validate(objs)
    for p in problems:
        print(p)
    print(f"{len(objs)} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
