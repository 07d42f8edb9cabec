"""Drives a running Switchboard with the real Nacos 1.x HTTP SDK (the legacy
`nacos.NacosClient` of nacos-sdk-python 2.0.x) configured with a username and password, as
an application would: the SDK logs in (`/nacos/v1/auth/login`), then sends the session's
accessToken on every call.

usage: auth_sdk.py HOST:PORT USERNAME PASSWORD NAMESPACE OTHER_NAMESPACE WORK_DIR
The user may register, publish and read in NAMESPACE and nothing in OTHER_NAMESPACE.
Exits non-zero with a message on the first expectation that fails; prints OK at the end.
"""
import os
import sys
import time
import traceback

from nacos import NacosClient
from nacos.exception import NacosException

addr, username, password, namespace, other, work = sys.argv[1:7]


def fail(message):
    print("FAIL: " + message, flush=True)
    os._exit(1)


def client_for(ns):
    client = NacosClient(addr, namespace=ns, username=username, password=password, logDir=work)
    client.no_snapshot = True
    return client


def main():
    client = client_for(namespace)
    if not client.token:
        fail("the SDK did not get an accessToken from its login")

    # Naming: register a persistent instance, then find it.
    if not client.add_naming_instance("orders", "10.1.2.3", 8080, ephemeral=False, metadata={"v": "1"}):
        fail("add_naming_instance answered false")
    found = client.list_naming_instance("orders", namespace_id=namespace)
    hosts = [(h["ip"], h["port"]) for h in found.get("hosts", [])]
    if ("10.1.2.3", 8080) not in hosts:
        fail("the registered instance is not listed: %r" % found)

    # Config: publish, read back, remove.
    if not client.publish_config("orders.properties", "DEFAULT_GROUP", "timeout=5"):
        fail("publish_config answered false")
    deadline = time.time() + 10
    content = None
    while time.time() < deadline:
        content = client.get_config("orders.properties", "DEFAULT_GROUP")
        if content == "timeout=5":
            break
        time.sleep(0.2)
    if content != "timeout=5":
        fail("get_config answered %r" % content)
    if not client.remove_config("orders.properties", "DEFAULT_GROUP"):
        fail("remove_config answered false")
    if not client.remove_naming_instance("orders", "10.1.2.3", 8080, ephemeral=False):
        fail("remove_naming_instance answered false")

    # Another namespace: the same credentials may do nothing there.
    stranger = client_for(other)
    try:
        stranger.publish_config("orders.properties", "DEFAULT_GROUP", "timeout=9")
        fail("a publish into %s was accepted" % other)
    except NacosException as e:
        if "privilege" not in str(e).lower():
            fail("a publish into %s failed for the wrong reason: %s" % (other, e))

    # A wrong password: the SDK's login fails and it gets no token.
    try:
        wrong = NacosClient(addr, namespace=namespace, username=username, password=password + "x", logDir=work)
        if wrong.token:
            fail("a wrong password got an accessToken")
    except Exception as e:  # the SDK lets the login's HTTP 403 through as it is
        if "403" not in str(e):
            fail("a wrong password failed for the wrong reason: %s" % e)
    print("OK", flush=True)


try:
    main()
except SystemExit:
    raise
except BaseException:
    fail(traceback.format_exc())
os._exit(0)
