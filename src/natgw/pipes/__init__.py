"""Pipes: one remote TCP service on a local port, relayed gateway to gateway.

    model      the `pipes:` section of cluster.yaml and how its fields relate
    protocol   the request one gateway sends another (pipe name + chain) and the reply
    addressing the tunnel addresses pipes run between (derived from public keys)
    relay      splicing two TCP connections in the kernel (no bytes in Python)
    server     the listeners, the access rules and chains, run by the foreground `up`
    publish    the state the serving process shares with `natgw status`
    metrics    natgw_pipe_* Prometheus metrics
"""
