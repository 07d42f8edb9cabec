"""Drives a running Switchboard with the real Nacos 1.x HTTP SDK (the legacy
`nacos.NacosClient` of nacos-sdk-python 2.0.x), as an application would.

usage: nacos_naming_sdk.py HOST:PORT TOKEN SERVICE WORK_DIR
Exits non-zero with a message on the first expectation that fails; prints OK at the end.
The server must run with --heartbeat-timeout-ms 2000 --ip-delete-timeout-ms 4000.
"""
import os
import sys
import threading
import traceback
import time

from nacos import NacosClient
from nacos.listener import SubscribeListener

addr, token, service, work = sys.argv[1:5]


def fail(message):
    print("FAIL: " + message, flush=True)
    # The SDK's subscription timers are not daemon threads: leave at once.
    os._exit(1)


def make_client():
    client = NacosClient(addr, namespace="", logDir=work)
    # Until access control lands, the admin token is the credential: the SDK sends it as
    # accessToken on every call without logging in.
    client.username = "admin"
    client.password = "x"
    client.token = token
    client.token_expire_time = time.time() + 3600
    return client


def wait(what, condition, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    fail("timed out waiting for " + what)


def hosts(client, **kwargs):
    return {h["port"]: h for h in client.list_naming_instance(service, **kwargs)["hosts"]}


client = make_client()
events = []
lock = threading.Lock()


def on_change(event, instance):
    with lock:
        events.append((event, instance.instance["port"]))


def seen(event, port):
    with lock:
        return (event, port) in events


def scenario():
    # Subscribe first (the SDK polls instance/list every second and compares).
    client.subscribe(SubscribeListener(on_change, "e2e"), 1, service_name=service)
    time.sleep(2.5)

    # Register an ephemeral provider with automatic heartbeats every second.
    if not client.add_naming_instance(service, "10.1.0.1", 8001, cluster_name="DEFAULT", metadata={"v": "1"},
                                      heartbeat_interval=1):
        fail("register of 8001 did not answer ok")
    found = hosts(client)
    if 8001 not in found or not found[8001]["healthy"] or found[8001]["metadata"].get("v") != "1":
        fail("8001 is not listed right after its registration: %r" % found)
    if found[8001]["serviceName"] != "DEFAULT_GROUP@@" + service:
        fail("serviceName is %r" % found[8001]["serviceName"])
    wait("the subscriber to see 8001 added", lambda: seen("ADDED", 8001))
    one = client.get_naming_instance(service, "10.1.0.1", 8001, cluster_name="DEFAULT")
    if one.get("ip") != "10.1.0.1" or one.get("port") != 8001 or one.get("healthy") is not True:
        fail("get_naming_instance answered %r" % one)

    # One instance through its full beat alone (the SDK always sends the beat JSON).
    beat = client.send_heartbeat(service, "10.1.0.3", 8003, cluster_name="DEFAULT")
    if beat.get("code") != 10200 or "clientBeatInterval" not in beat:
        fail("a full beat for an unknown instance answered %r" % beat)
    if 8003 not in hosts(client):
        fail("a full beat did not register 8003")
    wait("the subscriber to see 8003 added", lambda: seen("ADDED", 8003))

    # A change of an instance is seen by the subscriber.
    if not client.modify_naming_instance(service, "10.1.0.1", 8001, cluster_name="DEFAULT", weight=3.0):
        fail("modify of 8001 did not answer ok")
    wait("the subscriber to see 8001 modified", lambda: seen("MODIFIED", 8001))
    if hosts(client)[8001]["weight"] != 3.0:
        fail("the weight of 8001 did not change")

    # An instance whose beats stop expires (its own timeouts, from preserved.* metadata).
    meta = {"preserved.heart.beat.timeout": "1000", "preserved.ip.delete.timeout": "2000"}
    if not client.add_naming_instance(service, "10.1.0.2", 8002, cluster_name="DEFAULT", metadata=meta):
        fail("register of 8002 did not answer ok")
    wait("8002 to be listed", lambda: 8002 in hosts(client))
    wait("8002 to turn unhealthy without beats", lambda: hosts(client).get(8002, {}).get("healthy") is False, 10)
    if 8002 in hosts(client, healthy_only=True):
        fail("healthyOnly still lists the unhealthy 8002")
    wait("8002 to expire", lambda: 8002 not in hosts(client), 10)
    wait("the subscriber to see 8002 deleted", lambda: seen("DELETED", 8002))
    # Meanwhile the beating 8001 is still there and healthy.
    if not hosts(client).get(8001, {}).get("healthy"):
        fail("8001 kept beating but is not healthy: %r" % hosts(client))

    # Deregistration.
    if not client.remove_naming_instance(service, "10.1.0.1", 8001, cluster_name="DEFAULT"):
        fail("deregister of 8001 did not answer ok")
    # (A beat the SDK's heartbeat thread had in flight may register it again for a moment.)
    wait("8001 to be gone after its deregistration", lambda: 8001 not in hosts(client), 10)
    wait("the subscriber to see 8001 deleted", lambda: seen("DELETED", 8001))



try:
    scenario()
except Exception:
    traceback.print_exc()
    fail("the SDK raised")
print("OK", flush=True)
os._exit(0)
