#!/usr/bin/env bash
# Checks the files under deploy/: the Prometheus alerting rules (syntax and
# their unit tests, with promtool) and the Grafana dashboard (valid JSON whose
# queries name only metrics documented in docs/METRICS.md). Installs
# promtool (Debian package prometheus) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check rules deploy/prometheus/keygate-alerts.yml
(cd deploy/prometheus && promtool test rules keygate-alerts.test.yml)

python3 - <<'PY'
import json, re, sys

documented = set(re.findall(r"`(keygate_[a-z_]+)`", open("docs/METRICS.md").read()))
dashboard = json.load(open("deploy/grafana/keygate-dashboard.json"))
rules = open("deploy/prometheus/keygate-alerts.yml").read()
problems = []
queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
for text in queries + [rules]:
    for name in re.findall(r"keygate_[a-z_]+", text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in documented and base not in documented:
            problems.append(f"{name} is used under deploy/ but not documented in docs/METRICS.md")
used = {re.sub(r"_(bucket|sum|count)$", "", n) for t in queries for n in re.findall(r"keygate_[a-z_]+", t)}
for name in sorted(documented - used):
    problems.append(f"{name} is documented in docs/METRICS.md but no dashboard panel shows it")
if problems:
    print("\n".join(sorted(set(problems))), file=sys.stderr)
    sys.exit(1)
print(f"dashboard: {len(dashboard['panels'])} panels, {len(queries)} queries; every metric documented and on the dashboard")
PY
