#!/usr/bin/env python3
"""A live kvstashd after real traffic: /metrics passes `promtool check metrics`, exports
every metric of the catalog, and every metric named in the Grafana dashboard and the alert
rules; /healthz and /readyz answer; SIGTERM drains and exits 0.

usage: live_metrics_test.py KVSTASHD KVSTASH_CLI SOURCE_DIR
"""
import json
import os
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402


def dashboard_exprs(path):
    """Every PromQL expression of a Grafana dashboard: panel targets (rows included) and
    query variables."""
    dash = json.load(open(path))
    exprs = []

    def panels(ps):
        for p in ps:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            panels(p.get("panels", []))

    panels(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def rule_exprs(path):
    return [r["expr"] for g in yaml.safe_load(open(path))["groups"] for r in g["rules"]]


def main():
    kvstashd, cli, src = sys.argv[1:4]
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-deps.sh (Debian package prometheus)"
    failures = []

    with opslib.Daemon(kvstashd, ["--fidelity-probe-every", "1"]) as d:
        assert opslib.http_get(d.url("/healthz")) == (200, "ok\n")
        assert opslib.http_get(d.url("/readyz")) == (200, "ready\n")
        assert opslib.http_get(d.url("/nope"))[0] == 404
        opslib.make_traffic(cli, d.address)
        status, text = opslib.http_get(d.url("/metrics"))
        assert status == 200, status

        check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True)
        if check.returncode != 0:
            failures.append(f"promtool check metrics failed:\n{check.stdout}{check.stderr}")

        names = opslib.exported_names(text)
        for name, kind in opslib.catalog(src).items():
            want = [name] if kind != "histogram" else [f"{name}_bucket", f"{name}_sum",
                                                      f"{name}_count"]
            for w in want:
                if w not in names:
                    failures.append(f"catalog metric {w} missing from the live /metrics")
        for n in names:
            if not n.startswith("kvstash_"):
                failures.append(f"exported metric {n} lacks the kvstash_ prefix")

        # Real traffic shows up in the counters.
        for needle in ['kvstash_requests_total{code="OK",method="Put",transport="grpc"} 3',
                       'kvstash_requests_total{code="NOT_FOUND",method="Get",transport="grpc"} 1',
                       'kvstash_fidelity_probes_total{result="ok"} 3',
                       'kvstash_lookups_total{result="hit"} 1',
                       'kvstash_lookups_total{result="miss"} 1',
                       'kvstash_fidelity_relative_error_sum{preset="fp16",tensor="key"} 0']:
            if needle not in text:
                failures.append(f"expected sample missing: {needle}")

        allowed = names | {"up"}  # up: Prometheus' own per-target series
        sources = [(f"deploy/grafana/{f}", dashboard_exprs(os.path.join(src, "deploy/grafana", f)))
                   for f in sorted(os.listdir(os.path.join(src, "deploy/grafana")))
                   if f.endswith(".json")]
        sources.append(("deploy/prometheus/kvstash-rules.yml",
                        rule_exprs(os.path.join(src, "deploy/prometheus/kvstash-rules.yml"))))
        checked = 0
        for origin, exprs in sources:
            for e in exprs:
                for n in opslib.promql_metric_names(e):
                    checked += 1
                    if n not in allowed:
                        failures.append(f"{origin}: {n} (in `{e}`) is not exported by kvstashd")
        if checked < 30:
            failures.append(f"only {checked} metric references found: tokenizer broken?")

        code = d.stop()
        log = d.log()
        if code != 0:
            failures.append(f"kvstashd exited {code} on SIGTERM:\n{log}")
        if "stopped after draining" not in log:
            failures.append(f"no drain log line:\n{log}")

    for f in failures:
        print("FAIL:", f)
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
