"""Helpers for the operators' tests: run kvstashd on loopback with ephemeral ports, make
real traffic with the kvstash CLI, scrape /metrics, and pull metric names out of PromQL."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


class Daemon:
    """kvstashd on 127.0.0.1:0 (gRPC and metrics), logs and ready file in a temp dir."""

    def __init__(self, binary, extra_args=(), timeout=30):
        self.dir = tempfile.mkdtemp(prefix="kvstash-ops-")
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        ready = os.path.join(self.dir, "ready")
        args = [binary, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--ready-file", ready, "--host-capacity", "64MiB", "--worker-threads", "2",
                *extra_args]
        self.proc = subprocess.Popen(args, stdout=open(self.out_path, "w"),
                                     stderr=open(self.err_path, "w"))
        deadline = time.time() + timeout
        self.address = self.metrics = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvstashd exited with {self.proc.returncode}:\n{self.log()}")
            out = open(self.out_path).read()
            m = re.search(r"^kvstashd metrics on (\S+)$", out, re.M)
            s = re.search(r"^kvstashd serving on (\S+)$", out, re.M)
            if m and s:
                self.address, self.metrics = s.group(1), m.group(1)
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"kvstashd not ready after {timeout}s:\n{self.log()}")

    def log(self):
        return open(self.out_path).read() + open(self.err_path).read()

    def url(self, path):
        return f"http://{self.metrics}{path}"

    def stop(self, timeout=30):
        """SIGTERM, wait; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_get(url, timeout=10):
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run_cli(cli, address, *args, check=True):
    r = subprocess.run([cli, "--addr", address, *args], capture_output=True, text=True,
                       timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"kvstash {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def make_traffic(cli, address):
    """Puts with three presets, Gets (found, sliced, missing), Lookups (hit, miss), a
    Delete and Stats: every method answers OK at least once and some fail."""
    prev = None
    for i, preset in enumerate(["xquant", "kivi-2", "fp16"]):
        tokens = f"{i * 64}-{i * 64 + 63}"
        args = ["put", "--generate", "llama-3-8b", "--layers", "4", "--tokens", tokens,
                "--preset", preset, "--json"]
        if prev:
            args += ["--prev", prev]
        out = run_cli(cli, address, *args).stdout
        prev = re.search(r'"key":"([0-9a-f]{32})"', out).group(1)
    run_cli(cli, address, "lookup", "--tokens", "0-255", "--chunk-tokens", "64")
    run_cli(cli, address, "lookup", "--tokens", "1000-1063", "--chunk-tokens", "64")
    run_cli(cli, address, "get", "--key", prev, "--layers", "0:2")
    run_cli(cli, address, "get", "--key", "0" * 31 + "1", check=False)  # NOT_FOUND
    run_cli(cli, address, "stats")
    run_cli(cli, address, "rm", prev)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Metric names -----------------------------------------------------------------------

def exported_names(text):
    """Sample names in a Prometheus text exposition (with _bucket/_sum/_count), plus the
    family names of # TYPE lines."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def catalog(source_dir):
    """{name: type} from server/metrics/catalog.h."""
    text = open(os.path.join(source_dir, "server/metrics/catalog.h")).read()
    return {m.group(1): m.group(2).lower()
            for m in re.finditer(r'"(kvstash_[a-z0-9_]+)",\s*MetricType::k(\w+)', text)}


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar",
    "topk", "bottomk", "quantile", "count_values", "group", "atan2",
}
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{?[A-Za-z_][A-Za-z0-9_:]*\}?)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.X)


def promql_metric_names(expr):
    """Metric names in a PromQL expression: identifiers that are not functions (followed
    by '('), keywords, label names (inside {...} or after by/without/on/ignoring/group_*),
    strings, durations, numbers or Grafana variables."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)
              if m.lastgroup not in ("space",)]
    names, depth_braces, i = set(), 0, 0
    skip_group = False  # the next (...) holds label names
    paren_labels = 0    # depth inside such a group
    func_stack = []     # for label_values(metric, label): only the first argument counts
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct" and text == "{":
            depth_braces += 1
        elif kind == "punct" and text == "}":
            depth_braces -= 1
        elif kind == "punct" and text == "(":
            if skip_group or paren_labels:
                paren_labels += 1
                skip_group = False
            func_stack.append(tokens[i - 1][1] if i > 0 and tokens[i - 1][0] == "ident" else "")
        elif kind == "punct" and text == ")":
            if paren_labels:
                paren_labels -= 1
            if func_stack:
                func_stack.pop()
        elif kind == "punct" and text == "," and func_stack and func_stack[-1] == "label_values":
            # the rest of label_values(...) is a label name
            func_stack[-1] = "label_values_rest"
        elif kind == "ident":
            lower = text.lower()
            if lower in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                skip_group = True
            elif depth_braces or paren_labels or nxt == "(" or lower in _KEYWORDS:
                pass
            elif func_stack and func_stack[-1] == "label_values_rest":
                pass
            else:
                names.add(text)
        i += 1
    return names
