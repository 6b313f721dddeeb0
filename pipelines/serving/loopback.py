"""Keep a replica of a private (loopback-only) cluster on loopback.

The HTTP proxy listens on ``serve.host``, but Ray Serve 2.60 also starts an inter-deployment gRPC
server in every replica, bound to ``[::]:0``: all interfaces, with no setting to change it
(ray-project/ray#64544), and it speaks the replica's ASGI protocol, so it would take requests
from the network that bypass the proxy. On a private cluster every Ray address is 127.0.0.1, the
only address that server's clients use, so the replica binds it there instead. On a cluster the
user joined (``RAY_ADDRESS``) the cluster's exposure is the user's, and nothing changes.
"""

import logging

log = logging.getLogger("ray.serve")
_ALL_INTERFACES = "[::]:"


def bind_replica_grpc_to_loopback() -> bool:
    """Call in the replica before Serve finishes starting it; True when the bind was changed."""
    import ray.util
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
        return False
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None:
        log.warning("cannot keep the replica's gRPC server on loopback: Ray Serve %s binds it "
                    "differently", ray.__version__)
        return False

    def on_loopback(server, address: str) -> int:
        if address.startswith(_ALL_INTERFACES):
            address = "127.0.0.1:" + address[len(_ALL_INTERFACES):]
        return add_port(server, address)

    replica.add_port_to_grpc_server = on_loopback
    return True
