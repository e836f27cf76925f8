#!/usr/bin/python3
"""Managed by hvsuite (Team Echo-1): the address allocator of the host's load balancer.

Every few seconds: each Service of type LoadBalancer gets an address of the pool (the one it
has, else its spec.loadBalancerIP when free, else the first free one), HAProxy gets a TCP
frontend on that address and port forwarding to the Service's ClusterIP, and the Service's
status names the address once HAProxy serves it. A Service with a port the config does not
declare gets no address. Standard library only; talks to the API with its own
ServiceAccount's token (services: read; services/status: write).
"""

import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

CONFIG = "/etc/hvsuite/lb/config.json"


class Api:
    def __init__(self, config):
        self.base = config["api"]
        with open(config["token"]) as handle:
            self.token = handle.read().strip()
        self.tls = ssl.create_default_context(cafile=config["ca"])

    def call(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + self.token)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
            return json.load(response)


def key(service):
    return service["metadata"]["namespace"] + "/" + service["metadata"]["name"]


def current_address(service):
    ingress = (service.get("status", {}).get("loadBalancer") or {}).get("ingress") or []
    return ingress[0].get("ip") if ingress else None


def allocate(services, pool, ports):
    """namespace/name -> address for every Service that may have one; and complaints."""
    balanced = [
        s
        for s in services
        if s["spec"].get("type") == "LoadBalancer" and not s["spec"].get("loadBalancerClass")
    ]
    balanced.sort(key=lambda s: (s["metadata"].get("creationTimestamp", ""), key(s)))
    eligible, complaints = [], []
    for service in balanced:
        undeclared = [
            p["port"]
            for p in service["spec"]["ports"]
            if p.get("protocol", "TCP") != "TCP" or p["port"] not in ports
        ]
        if undeclared:
            complaints.append(f"{key(service)}: ports {undeclared} are not declared for the load balancer")
        else:
            eligible.append(service)
    taken = {}
    for service in eligible:
        address = current_address(service)
        if address in pool and address not in taken:
            taken[address] = key(service)
    given = {owner: address for address, owner in taken.items()}
    for service in eligible:
        if key(service) in given:
            continue
        wanted = service["spec"].get("loadBalancerIP")
        free = [a for a in pool if a not in taken]
        address = wanted if wanted in free else (free[0] if free else None)
        if address is None:
            complaints.append(f"{key(service)}: the pool is exhausted")
            continue
        taken[address] = key(service)
        given[key(service)] = address
    return given, complaints


def haproxy_config(services, given):
    lines = ["# Managed by hvsuite-lb-sync: one frontend per load-balanced Service port.", ""]
    for service in sorted(services, key=key):
        address = given.get(key(service))
        if address is None:
            continue
        for port in service["spec"]["ports"]:
            name = key(service).replace("/", "_") + "_" + str(port["port"])
            lines += [
                "frontend " + name,
                "    bind " + address + ":" + str(port["port"]),
                "    default_backend " + name,
                "backend " + name,
                "    server service "
                + service["spec"]["clusterIP"]
                + ":"
                + str(port["port"])
                + " check inter 2s",
                "",
            ]
    return "\n".join(lines)


def write_if_changed(path, text):
    try:
        with open(path) as handle:
            if handle.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".services-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    check = subprocess.run(["haproxy", "-c", "-q", "-f", directory + "/00-hvsuite.cfg", "-f", tmp])
    if check.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError("haproxy rejects the generated frontends; kept the previous ones")
    os.replace(tmp, path)
    return True


def reconcile(api, config, complained):
    services = api.call("GET", "/api/v1/services")["items"]
    given, complaints = allocate(services, config["pool"], set(config["ports"]))
    for complaint in complaints:
        if complaint not in complained:
            print(complaint, file=sys.stderr, flush=True)
            complained.add(complaint)
    if write_if_changed(config["haproxy_services"], haproxy_config(services, given)):
        subprocess.run(["systemctl", "reload-or-restart", "haproxy"], check=True)
        print("haproxy frontends: " + json.dumps(given, sort_keys=True), flush=True)
    for service in services:
        if service["spec"].get("type") != "LoadBalancer" or service["spec"].get("loadBalancerClass"):
            continue
        address = given.get(key(service))
        if current_address(service) == address:
            continue
        ingress = [{"ip": address}] if address else []
        api.call(
            "PATCH",
            "/api/v1/namespaces/{}/services/{}/status".format(*key(service).split("/")),
            {"status": {"loadBalancer": {"ingress": ingress}}},
            content_type="application/merge-patch+json",
        )


def main():
    with open(CONFIG) as handle:
        config = json.load(handle)
    api = Api(config)
    complained = set()
    while True:
        try:
            reconcile(api, config, complained)
        except Exception as exc:  # the next round retries; systemd keeps the journal
            if "--once" in sys.argv:
                raise
            print(f"reconcile failed: {exc}", file=sys.stderr, flush=True)
        if "--once" in sys.argv:
            return
        time.sleep(config["interval"])


if __name__ == "__main__":
    main()
