#!/usr/bin/env python3
"""deploy/: every YAML and JSON file parses; the Kubernetes manifests say what the guide
promises (DaemonSet on GPU nodes, probes on /healthz and /readyz, limits, hostIPC); the
PrometheusRule carries exactly the plain rule file's groups and both pass
`promtool check rules`; the TOML files load in kvstashd.

usage: deploy_test.py KVSTASHD SOURCE_DIR
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def load_all(root):
    docs = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            try:
                docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            except yaml.YAMLError as e:
                failures.append(f"{path}: not YAML: {e}")
        elif path.suffix == ".json":
            try:
                docs[path] = [json.loads(path.read_text())]
            except json.JSONDecodeError as e:
                failures.append(f"{path}: not JSON: {e}")
    return docs


def by_kind(docs, kind):
    return [d for ds in docs.values() for d in ds if isinstance(d, dict) and d.get("kind") == kind]


def promtool_rules(promtool, text, label):
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        check(r.returncode == 0, f"promtool check rules ({label}):\n{r.stdout}{r.stderr}")
    finally:
        os.unlink(f.name)


def loads_in_kvstashd(kvstashd, toml_text, label):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    try:
        r = subprocess.run([kvstashd, "--config", f.name, "--print-config"],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"{label}: kvstashd refuses it: {r.stderr}")
        return r.stdout
    finally:
        os.unlink(f.name)


def main():
    kvstashd, src = sys.argv[1], pathlib.Path(sys.argv[2])
    deploy = src / "deploy"
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-deps.sh (Debian package prometheus)"
    docs = load_all(deploy)
    check(len(docs) >= 9, f"expected the k8s, rules and dashboard files, found {len(docs)}")

    # --- DaemonSet ---
    (ds,) = by_kind(docs, "DaemonSet") or [None]
    check(ds is not None, "no DaemonSet")
    if ds:
        spec = ds["spec"]["template"]["spec"]
        check(spec.get("hostIPC") is True, "DaemonSet: hostIPC must be true")
        (c,) = spec["containers"]
        res = c["resources"]
        # CUDA IPC: the daemon sees every GPU of the node instead of owning one through the
        # device plugin, and shares the node's /dev/shm with the workers.
        check("nvidia.com/gpu" not in res.get("limits", {}) and
              "nvidia.com/gpu" not in res.get("requests", {}),
              "DaemonSet: an nvidia.com/gpu resource would hide the workers' GPUs")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        check(env.get("NVIDIA_VISIBLE_DEVICES") == "all", "DaemonSet: NVIDIA_VISIBLE_DEVICES=all")
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        check(mounts.get("/dev/shm") in vols and
              vols[mounts["/dev/shm"]].get("hostPath", {}).get("path") == "/dev/shm",
              "DaemonSet: /dev/shm must be the node's (hostPath) to share regions with workers")
        check("memory" in res["limits"] and "cpu" in res["limits"], "DaemonSet: cpu/memory limits")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        check(ports == {"grpc": 7450, "metrics": 7451}, f"DaemonSet ports {ports}")
        check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe path")
        check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe path")
        check(c["readinessProbe"]["httpGet"]["port"] == "metrics", "readiness probe port")
        check(spec["terminationGracePeriodSeconds"] > 10,
              "terminationGracePeriodSeconds must exceed shutdown_deadline (10s)")
    # --- Service, ServiceMonitor, ConfigMap ---
    (svc,) = by_kind(docs, "Service") or [None]
    check(svc is not None and {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "metrics"},
          "Service needs grpc and metrics ports")
    (sm,) = by_kind(docs, "ServiceMonitor") or [None]
    check(sm is not None and sm["spec"]["endpoints"][0]["port"] == "metrics"
          and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
    (cm,) = by_kind(docs, "ConfigMap") or [None]
    check(cm is not None and "kvstashd.toml" in cm.get("data", {}), "ConfigMap kvstashd.toml")
    if cm:
        printed = loads_in_kvstashd(kvstashd, cm["data"]["kvstashd.toml"], "ConfigMap")
        check('listen = "0.0.0.0:7451"' in printed, "ConfigMap must expose metrics to Prometheus")
    loads_in_kvstashd(kvstashd, (deploy / "kvstashd.toml").read_text(), "deploy/kvstashd.toml")

    # --- Rules: plain file == PrometheusRule, both valid ---
    plain_path = deploy / "prometheus" / "kvstash-rules.yml"
    plain = yaml.safe_load(plain_path.read_text())
    (rule,) = by_kind(docs, "PrometheusRule") or [None]
    check(rule is not None, "no PrometheusRule")
    if rule:
        check(rule["spec"]["groups"] == plain["groups"],
              "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/"
              "kvstash-rules.yml: run deploy/prometheus/make-prometheusrule.py")
        promtool_rules(promtool, yaml.safe_dump({"groups": rule["spec"]["groups"]}),
                       "PrometheusRule groups")
    promtool_rules(promtool, plain_path.read_text(), str(plain_path))
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"] if "alert" in r}
    for want in ["KvstashDown", "KvstashPoolNearFull", "KvstashEvictionStorm",
                 "KvstashHighErrorRate", "KvstashFidelityDegraded"]:
        check(want in alerts, f"alert {want} missing")
    guide = (src / "docs" / "operators.md").read_text()
    for a in alerts:
        check(a in guide, f"docs/operators.md does not explain alert {a}")

    # --- Dashboard ---
    dashboards = [p for p in docs if p.suffix == ".json" and "grafana" in p.parts]
    check(dashboards, "no Grafana dashboard in deploy/grafana")
    for p in dashboards:
        d = docs[p][0]
        check(d.get("panels") and d.get("title"), f"{p}: no panels/title")

    # --- Container file (cannot be built here: no container engine) ---
    cf = (deploy / "container" / "Containerfile").read_text()
    froms = [l.split()[1] for l in cf.splitlines() if l.startswith("FROM ")]
    check(len(froms) >= 2, "Containerfile must be multi-stage")
    check(froms and froms[-1].startswith("nvidia/cuda:") and "-runtime-" in froms[-1],
          f"final stage must be a CUDA runtime image, got {froms[-1:]}")

    for f in failures:
        print("FAIL:", f)
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
