#!/usr/bin/env python3
"""Writes deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/kvstash-rules.yml.

The plain rule file is the source; run this after editing it. tests/operators/deploy_test.py
fails when the two disagree.
"""
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
HEADER = """\
# Generated from deploy/prometheus/kvstash-rules.yml by
# deploy/prometheus/make-prometheusrule.py; edit the plain file and rerun.
# For the Prometheus Operator: the kvstash alerts as a PrometheusRule.
"""


def build(rules_path):
    groups = yaml.safe_load(pathlib.Path(rules_path).read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kvstash",
            "namespace": "kvstash",
            "labels": {"app.kubernetes.io/name": "kvstash", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }


def main():
    out = HERE.parent / "kubernetes" / "prometheusrule.yaml"
    text = HEADER + yaml.safe_dump(build(HERE / "kvstash-rules.yml"), sort_keys=False, width=100)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
