#!/usr/bin/env python3
"""Debian's Prometheus server scrapes a live kvstashd (loopback, ephemeral ports, temp
dir) and a series is read back through Prometheus' HTTP API.

usage: prometheus_scrape_test.py KVSTASHD KVSTASH_CLI
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

TIMEOUT_S = 45


def main():
    kvstashd, cli = sys.argv[1:3]
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: run scripts/install-deps.sh (Debian package prometheus)"
    with opslib.Daemon(kvstashd) as d:
        opslib.make_traffic(cli, d.address)
        work = tempfile.mkdtemp(prefix="kvstash-prom-")
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kvstash
    static_configs:
      - targets: ["{d.metrics}"]
""")
        port = opslib.free_port()
        log = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            query = urllib.parse.quote('kvstash_chunks_put_total{job="kvstash"}')
            up_query = urllib.parse.quote('up{job="kvstash"}')
            deadline = time.time() + TIMEOUT_S
            last = None
            while time.time() < deadline:
                assert prom.poll() is None, "prometheus exited:\n" + open(log.name).read()
                try:
                    status, body = opslib.http_get(
                        f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=2)
                except OSError as e:  # not listening yet
                    last = str(e)
                    time.sleep(0.25)
                    continue
                last = body
                if status == 200:
                    result = json.loads(body)["data"]["result"]
                    if result and float(result[0]["value"][1]) == 3:
                        _, up = opslib.http_get(
                            f"http://127.0.0.1:{port}/api/v1/query?query={up_query}")
                        up_result = json.loads(up)["data"]["result"]
                        assert up_result and up_result[0]["value"][1] == "1", up
                        print("prometheus scraped kvstashd:", result[0]["metric"])
                        print("1 passed, 0 failed")
                        return 0
                time.sleep(0.25)
            print(f"FAIL: no kvstash series in Prometheus after {TIMEOUT_S}s; last answer: {last}")
            print(open(log.name).read()[-4000:])
            print("0 passed, 1 failed")
            return 1
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
