# Drives a Switchboard node with the real Nacos 1.x HTTP SDK (nacos-sdk-python's legacy
# NacosClient): publish, get, a listener callback that fires on a change, delete.
# Usage: python config_sdk.py <host:port> <token> <namespace or ""> <work dir>
import os
import queue
import sys
import time

from nacos import NacosClient
from nacos.exception import NacosException

server, token, namespace, work = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
client = NacosClient(server, namespace=namespace)
# Until access control lands, the SDK's credential is the admin token: with a username,
# a password and an unexpired token it sends accessToken=<token> without logging in.
client.username, client.password = "admin", "x"
client.token = token
client.token_expire_time = time.time() + 3600
client.snapshot_base = os.path.join(work, "snapshot")
client.failover_base = os.path.join(work, "failover")
client.pulling_timeout = 5

data_id, group = "sdk-app.yaml", "SDK_GROUP"


def check(condition, what):
    if not condition:
        print("FAIL: " + what, flush=True)
        if client.process_mgr is not None:
            client.process_mgr.shutdown()
        os._exit(1)
    print("ok: " + what, flush=True)


check(client.get_config(data_id, group, no_snapshot=True) is None, "an absent config reads as None")
check(client.publish_config(data_id, group, "port: 8080\n", config_type="yaml"), "publish answers true")
check(client.get_config(data_id, group, no_snapshot=True) == "port: 8080\n", "get returns the published content")
page = client.get_configs(no_snapshot=True, group=group)
check(page["totalCount"] == 1 and page["pageItems"][0]["dataId"] == data_id
      and page["pageItems"][0]["content"] == "port: 8080\n", "get_configs lists it (%r)" % page)

try:
    client.publish_config(data_id, group, "port: [8080\n", config_type="yaml")
    check(False, "broken yaml is refused")
except NacosException as error:
    check("400" in str(error), "broken yaml is refused with a 400 (%s)" % error)
check(client.get_config(data_id, group, no_snapshot=True) == "port: 8080\n", "a refused publish changes nothing")

events = queue.Queue()
client.add_config_watcher(data_id, group, lambda args: events.put(args["content"]))
time.sleep(1.5)  # the puller's first long-poll is out
check(client.publish_config(data_id, group, "port: 9090\n", config_type="yaml"), "second publish answers true")
try:
    content = events.get(timeout=15)
except queue.Empty:
    content = None
check(content == "port: 9090\n", "the listener fired with the new content (%r)" % content)

check(client.remove_config(data_id, group), "remove answers true")
check(client.get_config(data_id, group, no_snapshot=True) is None, "a removed config reads as None")
print("ALL OK", flush=True)
# The watcher started a multiprocessing manager (a child process): stop it, then leave
# without waiting for the puller thread.
if client.process_mgr is not None:
    client.process_mgr.shutdown()
os._exit(0)
