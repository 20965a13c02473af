"""Generated protobuf messages of the kvstash.v1 wire API (proto/kvstash/v1/kvstash.proto).

kvstash_pb2.py is generated with Debian 12's protoc 3.21 by
``protoc -Iproto --python_out=client/python proto/kvstash/v1/kvstash.proto`` from the
repository root, and checked in; tests/test_proto_stubs.py fails when it is stale.
"""
