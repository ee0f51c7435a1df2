#!/usr/bin/env python3
"""CI check that a grpcio client with its default limits reads every refusal in full.

grpc-core clients refuse response trailers over 8 KiB by default, and then report
RESOURCE_EXHAUSTED instead of the server's answer. Hostile input (a million-digit price,
hundreds of long bad values) must still come back as INVALID_ARGUMENT with its field
violations, and the store's history must stay readable.

    python3 examples/python/default_limits_check.py target/debug/inventory-sync
"""

import pathlib
import sys

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from local_server import local_server  # noqa: E402
from sync_example import generate_stubs  # noqa: E402

STORE = 11


def refusal(stub, pb, products):
    """The error of a sync of `products`, sent with a default channel."""
    messages = [pb.SyncRequest(header=pb.SyncHeader(store_id=STORE)),
                pb.SyncRequest(products=products)]
    try:
        stub.Sync(iter(messages), timeout=60)
    except grpc.RpcError as error:
        return error
    sys.exit("a sync of invalid products was accepted")


def check(error, field):
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        sys.exit(f"expected INVALID_ARGUMENT, got {error.code()}: {error.details()[:200]}")
    if len(error.details().encode()) > 1024:
        sys.exit(f"the status message is {len(error.details().encode())} bytes")
    trailers = dict(error.trailing_metadata() or ())
    detail = trailers.get("grpc-status-details-bin", b"")
    if field.encode() not in detail:
        sys.exit(f"the BadRequest detail does not name {field}")


def main():
    binary = pathlib.Path(sys.argv[1]).resolve()
    pb, services = generate_stubs()
    with local_server(binary) as address, grpc.insecure_channel(address) as channel:
        stub = services.InventorySyncStub(channel)
        huge_price = pb.ProductUpdate(external_id="a", price="9" * 1_000_000)
        check(refusal(stub, pb, [huge_price]), "products[0].price")
        many = [pb.ProductUpdate(external_id=f"p{n:0>120}", price="x" * 5_000,
                                 barcodes=["é" * 5_000]) for n in range(100)]
        check(refusal(stub, pb, many), "products[0].barcodes[0]")
        runs = stub.ListSyncRuns(pb.ListSyncRunsRequest(store_id=STORE), timeout=60)
        if len(runs.runs) != 2:
            sys.exit(f"expected 2 runs in the history, got {len(runs.runs)}")
    print("default client limits: ok")


if __name__ == "__main__":
    main()
