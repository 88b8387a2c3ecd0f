#!/usr/bin/env python3
"""Wrap and unwrap a secret through keywardd from Python, and read keyward's
error reason from a refused call.

Needs grpcio (Debian: python3-grpcio) and stubs generated from the .proto
files with grpc_tools (Debian: python3-grpc-tools), on the import path:

    python3 -m grpc_tools.protoc -I api -I examples/proto \
        -I /usr/lib/python3/dist-packages/grpc_tools/_proto \
        --python_out=gen --grpc_python_out=gen \
        api/keyward/v1/keyward.proto examples/proto/rpc_status.proto
    PYTHONPATH=gen python3 examples/python/keyward_example.py

The socket is $KEYWARD_SOCKET, else /run/keyward/keyward.sock. The caller
needs no token: keywardd authorises the uid, gid and unit the kernel reports
for this process. The key (default examples/python, or the first argument)
is created when missing, which needs the key.create operation.
"""

import os
import sys

import grpc

from keyward.v1 import keyward_pb2, keyward_pb2_grpc
import rpc_status_pb2

DEFAULT_SOCKET = "/run/keyward/keyward.sock"
ERROR_DOMAIN = "keyward.dev"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def keyward_reason(err):
    """Returns the keyward reason (e.g. "KEY_NOT_FOUND") of a failed call,
    or None when the error does not come from keywardd (no such socket,
    a proxy...)."""
    for name, value in err.trailing_metadata() or ():
        if name != "grpc-status-details-bin":
            continue
        status = rpc_status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.type_url != ERROR_INFO_TYPE:
                continue
            info = rpc_status_pb2.ErrorInfo.FromString(detail.value)
            if info.domain == ERROR_DOMAIN:
                return info.reason
    return None


def channel(socket_path):
    # "unix:" plus an absolute path; grpc sends no credentials: the daemon
    # reads the caller's identity from the socket (SO_PEERCRED). The target
    # is a URI: a path with '?', '#' or '%' would name another socket
    # ("/run/k.sock#x" connects to /run/k.sock), so such a path is refused.
    path = os.path.abspath(socket_path)
    if any(c in path for c in "?#%"):
        raise ValueError("socket path %r holds '?', '#' or '%%': gRPC would read it as part of a URI" % path)
    return grpc.insecure_channel("unix:" + path)


def ensure_key(api, name):
    try:
        api.CreateKey(keyward_pb2.CreateKeyRequest(key=name, key_type="aes-256-gcm"), timeout=10)
        print("created key", name)
    except grpc.RpcError as err:
        if keyward_reason(err) != "KEY_EXISTS":
            raise
        print("key", name, "exists")


def main():
    key = sys.argv[1] if len(sys.argv) > 1 else "examples/python"
    with channel(os.environ.get("KEYWARD_SOCKET") or DEFAULT_SOCKET) as ch:
        api = keyward_pb2_grpc.KeywardStub(ch)
        ensure_key(api, key)

        secret = bytearray(b"s3cr3t-api-token")
        context = {"app": "example", "lang": "python"}
        wrapped = api.Wrap(keyward_pb2.WrapRequest(key=key, plaintext=bytes(secret), context=context), timeout=10)
        print("wrapped with %s version %d: %d bytes" % (wrapped.key, wrapped.version, len(wrapped.ciphertext)))

        opened = api.Unwrap(keyward_pb2.UnwrapRequest(ciphertext=wrapped.ciphertext, context=context), timeout=10)
        if opened.plaintext != bytes(secret):
            sys.exit("unwrap returned other bytes than were wrapped")
        print("unwrapped: the same %d bytes" % len(opened.plaintext))
        secret[:] = bytes(len(secret))  # Python cannot clear the immutable copies

        # The context is bound into the blob: another one is refused, and
        # the reason says why.
        try:
            api.Unwrap(keyward_pb2.UnwrapRequest(ciphertext=wrapped.ciphertext, context={"app": "other"}), timeout=10)
            sys.exit("unwrap with another context succeeded")
        except grpc.RpcError as err:
            print("unwrap with another context: %s, reason %s" % (err.code().name, keyward_reason(err)))

        try:
            api.DescribeKey(keyward_pb2.DescribeKeyRequest(key=key + "-missing"), timeout=10)
            sys.exit("describe of a missing key succeeded")
        except grpc.RpcError as err:
            print("describe a missing key: %s, reason %s" % (err.code().name, keyward_reason(err)))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as err:
        reason = keyward_reason(err)
        sys.exit("keyward_example: %s: %s%s" % (err.code().name, err.details(), " (reason %s)" % reason if reason else ""))
