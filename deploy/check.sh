#!/usr/bin/env bash
# Checks everything under deploy/ and dashboards/; exits non-zero when anything fails.
#   - Prometheus: promtool check config / check rules / test rules (installs Debian's prometheus
#     package when promtool is missing and this runs as root with apt-get)
#   - the PrometheusRule is generated from the rule file and in sync (and, with PyYAML, the same groups)
#   - every YAML manifest parses (when PyYAML is importable)
#   - the Grafana dashboard: valid JSON, a unit on every panel, $__rate_interval in every rate()
#   - systemd-analyze verify on the unit and its GPU drop-in (skipped, with a note, where it cannot run)
# Run by `cargo test` (tests/deploy_files.rs).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
run() { "$@" || fail "$*"; }

step "promtool"
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "promtool missing: installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
      || fail "apt-get install prometheus"
  fi
fi
if command -v promtool >/dev/null 2>&1; then
  promtool --version 2>&1 | head -1
  run promtool check config deploy/prometheus/prometheus.yml
  run promtool check rules deploy/prometheus/rules/agent.rules.yml
  # Relative paths in the test file resolve from its own folder.
  (cd deploy/prometheus && promtool test rules tests/agent.rules.test.yml) || fail "promtool test rules"
else
  fail "promtool not found and could not be installed (apt-get install prometheus)"
fi

step "PrometheusRule in sync with the rule file"
run deploy/kubernetes/make-prometheusrule.sh --check

step "YAML manifests"
if python3 -c 'import yaml' 2>/dev/null; then
  python3 - <<'PY' || fail "YAML manifests"
import glob, sys, yaml
bad = 0
files = sorted(glob.glob("deploy/**/*.y*ml", recursive=True) + glob.glob("dashboards/**/*.y*ml", recursive=True))
for f in files:
    try:
        docs = [d for d in yaml.safe_load_all(open(f, encoding="utf-8")) if d is not None]
        print(f"ok  {f} ({len(docs)} document{'s' if len(docs) != 1 else ''})")
    except yaml.YAMLError as e:
        print(f"BAD {f}: {e}", file=sys.stderr); bad += 1
rules = yaml.safe_load(open("deploy/prometheus/rules/agent.rules.yml"))
pr = yaml.safe_load(open("deploy/kubernetes/prometheusrule.yaml"))
if pr.get("kind") != "PrometheusRule" or pr["spec"]["groups"] != rules["groups"]:
    print("BAD prometheusrule.yaml: its groups differ from agent.rules.yml", file=sys.stderr); bad += 1
else:
    print("ok  prometheusrule.yaml has the same groups as agent.rules.yml")
sys.exit(1 if bad else 0)
PY
else
  echo "note: PyYAML not importable; YAML syntax of the manifests not checked here (promtool parsed the Prometheus files)"
fi

step "Grafana dashboard"
if command -v python3 >/dev/null 2>&1; then
  run python3 deploy/dashboard_lint.py dashboards/agent.json
else
  fail "python3 not found (needed to lint dashboards/agent.json)"
fi

step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # No agent binary is installed here: point Exec lines at a stub so verify checks the rest.
  printf '#!/bin/sh\nexit 0\n' > "$tmp/agent" && chmod +x "$tmp/agent"
  printf '[Service]\nType=oneshot\nExecStart=%s\n' "$tmp/agent" > "$tmp/probe.service"
  if ! probe=$(cd "$tmp" && systemd-analyze verify ./probe.service 2>&1) || [ -n "$probe" ]; then
    echo "note: systemd-analyze cannot verify units in this environment; skipped ($probe)"
  else
    for variant in cpu gpu; do
      rm -rf "$tmp/agent.service" "$tmp/agent.service.d"
      sed "s#/usr/local/bin/agent#$tmp/agent#g" deploy/systemd/agent.service > "$tmp/agent.service"
      if [ "$variant" = gpu ]; then
        mkdir "$tmp/agent.service.d" && cp deploy/systemd/agent.service.d/gpu.conf "$tmp/agent.service.d/"
      fi
      out=$(cd "$tmp" && systemd-analyze verify ./agent.service 2>&1); rc=$?
      # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
      if [ "$rc" != 0 ] || [ -n "$out" ]; then
        echo "$out" >&2; fail "systemd-analyze verify agent.service ($variant)"
      else
        echo "agent.service ($variant): verified"
      fi
    done
  fi
else
  echo "note: systemd-analyze not installed; the systemd unit was not verified (apt-get install systemd)"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "deploy/check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/check.sh: all checks passed"
