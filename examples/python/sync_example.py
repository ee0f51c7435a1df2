#!/usr/bin/env python3
"""A Python client of inventory-sync, its stubs generated from the service's own proto.

It performs the original example sync of three products, then a sync with clear that lists
two of them, and prints the counts of each. Usage:

    pip install -r examples/python/requirements.txt
    python3 examples/python/sync_example.py --server 127.0.0.1:50051 --store 1 [--token T]
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

from grpc_tools import protoc

import grpc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = "inventory/v1/inventory.proto"


def generate_stubs():
    """Generates inventory_pb2 and inventory_pb2_grpc into a temporary directory."""
    out = tempfile.mkdtemp(prefix="inventory-sync-stubs-")
    include = pathlib.Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO_FILE,
    ])
    if status != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
    sys.path.insert(0, out)
    messages = importlib.import_module("inventory.v1.inventory_pb2")
    services = importlib.import_module("inventory.v1.inventory_pb2_grpc")
    return messages, services


def sync(stub, pb, store_id, products, clear, metadata):
    """Streams one sync: the header first, then the products, then half-closes."""
    def requests():
        yield pb.SyncRequest(header=pb.SyncHeader(store_id=store_id, clear=clear))
        yield pb.SyncRequest(products=products)
    return stub.Sync(requests(), metadata=metadata, timeout=30)


def print_counts(label, response):
    print(f"{label}: received={response.received} created={response.created} "
          f"updated={response.updated} unchanged={response.unchanged} "
          f"cleared={response.cleared}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--store", type=int, default=1, help="the store to sync")
    parser.add_argument("--token", help="a bearer token (inventory-sync tokens create)")
    args = parser.parse_args()

    pb, services = generate_stubs()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.server) as channel:
        stub = services.InventorySyncStub(channel)
        # The original HTTP API's example: three products with their barcodes and stock.
        products = [
            pb.ProductUpdate(external_id="10003", barcodes=["00123345"], in_stock=12),
            pb.ProductUpdate(external_id="10004", barcodes=["08234123"], in_stock=12),
            pb.ProductUpdate(external_id="10005", barcodes=["08123456"], in_stock=33),
        ]
        print_counts("sync", sync(stub, pb, args.store, products, False, metadata))
        # 10005 sold out and left the export: a sync with clear sets it out of stock.
        print_counts("sync with clear", sync(stub, pb, args.store, products[:2], True, metadata))

        product = stub.GetProduct(
            pb.GetProductRequest(store_id=args.store, external_id="10005"),
            metadata=metadata, timeout=10)
        print(f"product 10005: in_stock={product.in_stock} "
              f"match_status={pb.MatchStatus.Name(product.match_status)}")


if __name__ == "__main__":
    main()
