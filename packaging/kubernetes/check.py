#!/usr/bin/env python3
"""Checks the Kubernetes examples: they parse, the sidecar gets the pod's identity from the
downward API and sized resources, both run unprivileged, the agent pushes to the aggregator's
Service, and the configurations in the ConfigMaps pass the binaries' own --check-config.

    python3 packaging/kubernetes/check.py target/release
"""
import os
import subprocess
import sys
import tempfile

import yaml

here = os.path.dirname(os.path.abspath(__file__))
bindir = sys.argv[1] if len(sys.argv) > 1 else "target/release"


def load(name):
    with open(os.path.join(here, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kind(docs, k):
    return [d for d in docs if d["kind"] == k]


def check(cond, what):
    if not cond:
        sys.exit(f"packaging/kubernetes: {what}")


def hardened(c):
    sc = c.get("securityContext", {})
    check(sc.get("runAsNonRoot") and sc.get("runAsUser") == 65532, f"{c['name']} runs as 65532")
    check(sc.get("allowPrivilegeEscalation") is False, f"{c['name']} no privilege escalation")
    check(sc.get("readOnlyRootFilesystem") is True, f"{c['name']} read-only root")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']} drops capabilities")
    r = c.get("resources", {})
    check(r.get("requests", {}).get("memory") and r.get("limits", {}).get("memory"),
          f"{c['name']} has memory requests and limits")


def check_config(binary, text, name, extra=None):
    with tempfile.TemporaryDirectory() as d:
        if extra:
            extra(d)
            text = text.replace("/etc/vigil/rules", os.path.join(d, "rules"))
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([os.path.join(bindir, binary), "--check-config", path],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"{binary} --check-config: {r.stdout}{r.stderr}")


side = load("sidecar.yaml")
dep = kind(side, "Deployment")[0]
containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
agent = containers["vigil-agent"]
env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in agent["env"]}
check(env.get("POD_NAME") == "metadata.name", "POD_NAME from the downward API")
check(env.get("POD_NAMESPACE") == "metadata.namespace", "POD_NAMESPACE from the downward API")
hardened(agent)
cm = kind(side, "ConfigMap")[0]["data"]["agent.toml"]
check("http://vigil-aggregator:9470/api/v1/write" in cm, "the agent pushes to the aggregator's Service")
check("token_file" in cm and "series_limit" in cm, "the agent pushes with the token and bounds its scrape")
check_config("vigil-agent", cm, "agent.toml")

agg = load("aggregator.yaml")
adep = kind(agg, "Deployment")[0]
check(adep["spec"]["replicas"] == 1 and adep["spec"]["strategy"]["type"] == "Recreate",
      "one aggregator at a time (its state is on one volume)")
ac = adep["spec"]["template"]["spec"]["containers"][0]
hardened(ac)
svc = kind(agg, "Service")[0]
check(svc["metadata"]["name"] == "vigil-aggregator" and svc["spec"]["ports"][0]["port"] == 9470,
      "the Service the agents push to")
maps = {m["metadata"]["name"]: m["data"] for m in kind(agg, "ConfigMap")}
config = maps["vigil-aggregator-config"]["aggregator.toml"]
check("auth_token_file" in config and "max_series" in config,
      "the aggregator asks for the token and bounds its series to its memory limit")


def rules(d):
    os.mkdir(os.path.join(d, "rules"))
    for name, text in maps["vigil-aggregator-rules"].items():
        with open(os.path.join(d, "rules", name), "w") as f:
            f.write(text)


check_config("vigil-aggregator", config, "aggregator.toml", rules)
mounts = {m["mountPath"] for m in ac["volumeMounts"]}
check({"/etc/vigil/config", "/etc/vigil/rules", "/var/lib/vigil", "/tmp"} <= mounts,
      "config and rules mounted as directories (no subPath: edits reach the pod), state and /tmp writable")
check(not any("subPath" in m for m in ac["volumeMounts"]), "no subPath mounts")
sa = kind(agg, "ServiceAccount")[0]
check("eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {}), "IRSA role annotation")
# The HA pair: a StatefulSet of 2 across zones behind a headless Service, a disruption budget of
# one, [cluster] in its config, and agents pushing to each pod's stable name.
ha = load("aggregator-ha.yaml")
sts = kind(ha, "StatefulSet")[0]
check(sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "vigil-aggregator",
      "the pair is a StatefulSet of 2 named by its headless Service")
aff = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
check(aff["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
      == "topology.kubernetes.io/zone", "one aggregator per zone")
hardened(sts["spec"]["template"]["spec"]["containers"][0])
hsvc = kind(ha, "Service")[0]
check(hsvc["spec"].get("clusterIP") == "None", "the Service is headless (one name per pod)")
pdb = kind(ha, "PodDisruptionBudget")[0]
check(pdb["spec"].get("maxUnavailable") == 1, "a drain takes one of the two at a time")
hmaps = {m["metadata"]["name"]: m["data"] for m in kind(ha, "ConfigMap")}
hconfig = hmaps["vigil-aggregator-config"]["aggregator.toml"]
check("[cluster]" in hconfig and "lease_name" in hconfig, "the pair's config has [cluster]")
maps = hmaps
check_config("vigil-aggregator", hconfig, "aggregator.toml", rules)
hagent = hmaps["vigil-agent-ha"]["agent.toml"]
for i in (0, 1):
    check(f"http://vigil-aggregator-{i}.vigil-aggregator:9470/api/v1/write" in hagent,
          f"agents push to pod {i}'s stable name")
check_config("vigil-agent", hagent, "agent.toml")
print("packaging/kubernetes: ok", file=sys.stderr)
