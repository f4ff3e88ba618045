"""A real gRPC server and client (grpcio) for tests/grpc.rs, on raw bytes
(no generated code): `server EVENTS_FILE [tls CERT KEY] [max-age MS]` serves
on 127.0.0.1 (over TLS with CERT and KEY; sending GOAWAY to connections
older than MS) and prints its port; `client ADDRESS CASE` runs one case
against ADDRESS (tine) and exits 0 when it saw what it must, printing what
it saw either way.

Methods (service t.T): Unary echoes; ServerStream answers N (the request,
in ASCII) messages; ClientStream answers how many messages and bytes came;
Bidi answers each message as it comes (the client waits for each answer
before it sends the next); Slow sleeps until cancelled; Status ends with the
status and message the request names. The server writes what it saw of
cancellations to EVENTS_FILE, a line each."""

import sys
import threading
import time

import grpc

SERVICE = "t.T"


def server(events_path, options):
    events = open(events_path, "a", buffering=1)

    def unary(request, context):
        return request

    def server_stream(request, context):
        for i in range(int(request)):
            yield b"message %d" % i

    def client_stream(request_iterator, context):
        count = size = 0
        for message in request_iterator:
            count += 1
            size += len(message)
        return b"%d %d" % (count, size)

    def bidi(request_iterator, context):
        for message in request_iterator:
            yield b"re: " + message

    def slow(request, context):
        done = threading.Event()
        context.add_callback(lambda: (events.write("cancelled slow\n"), done.set()))
        done.wait(30)
        return b"too late"

    def stream_until_cancelled(request, context):
        # The RPC's end, whenever it comes (a cancelled generator is never
        # resumed): cancelled unless every tick went.
        done = []
        context.add_callback(lambda: None if done else events.write("cancelled stream\n"))
        for i in range(100000):
            if not context.is_active():
                return
            yield b"tick %d" % i
            time.sleep(0.001)
        done.append(True)

    def status(request, context):
        code_name, message = request.decode().split(" ", 1)
        context.abort(getattr(grpc.StatusCode, code_name), message)

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Ticks": grpc.unary_stream_rpc_method_handler(stream_until_cancelled),
        "Status": grpc.unary_unary_rpc_method_handler(status),
    }
    from concurrent import futures

    server_options = []
    if "max-age" in options:
        age = int(options[options.index("max-age") + 1])
        server_options += [("grpc.max_connection_age_ms", age), ("grpc.max_connection_age_grace_ms", 10000)]
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=server_options)
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if "tls" in options:
        at = options.index("tls")
        cert, key = open(options[at + 1], "rb").read(), open(options[at + 2], "rb").read()
        port = s.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(port, flush=True)
    # Until the test kills it, or its stdin closes.
    sys.stdin.read()
    s.stop(0)


def method(channel, kind, name):
    path = "/%s/%s" % (SERVICE, name)
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


def expect(condition, what):
    if not condition:
        print("FAILED: " + what, flush=True)
        sys.exit(1)
    print("ok: " + what, flush=True)


def client(address, case):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    if case == "unary":
        for size in (0, 5, 100000):
            body = bytes(i % 251 for i in range(size))
            got = method(channel, "unary_unary", "Unary")(body, timeout=10)
            expect(got == body, "unary echo of %d bytes" % size)
    elif case == "server_stream":
        got = list(method(channel, "unary_stream", "ServerStream")(b"10000", timeout=60))
        expect(len(got) == 10000, "10000 messages streamed (got %d)" % len(got))
        expect(got[0] == b"message 0" and got[-1] == b"message 9999", "in order, intact")
    elif case == "client_stream":
        messages = [b"x" * (i % 300) for i in range(2000)]
        got = method(channel, "stream_unary", "ClientStream")(iter(messages), timeout=60)
        expect(got == b"%d %d" % (len(messages), sum(map(len, messages))), "client stream counted: %r" % got)
    elif case == "bidi":
        # Each side waits for the other: a message goes only once the
        # answer to the one before has come back through tine.
        outbox = []
        ready = threading.Semaphore(0)

        def requests():
            for i in range(200):
                yield b"ping %d" % i
                ready.acquire()

        calls = method(channel, "stream_stream", "Bidi")(requests(), timeout=60)
        for i, answer in enumerate(calls):
            outbox.append(answer)
            expect_quiet = answer == b"re: ping %d" % i
            if not expect_quiet:
                expect(False, "answer %d was %r" % (i, answer))
            ready.release()
        expect(len(outbox) == 200, "200 ping-pongs, each waiting for the other side")
    elif case == "deadline":
        try:
            method(channel, "unary_unary", "Slow")(b"", timeout=0.5)
            expect(False, "a slow call returned")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED (%s)" % e.code())
    elif case == "cancel":
        call = method(channel, "unary_stream", "Ticks")(b"", timeout=60)
        seen = 0
        for _ in call:
            seen += 1
            if seen == 50:
                call.cancel()
                break
        expect(seen == 50, "50 messages before cancelling")
    elif case == "parallel":
        unary = method(channel, "unary_unary", "Unary")
        calls = [unary.future(b"call %d" % i, timeout=30) for i in range(100)]
        got = [c.result() for c in calls]
        expect(got == [b"call %d" % i for i in range(100)], "100 calls at once, each its own answer")
    elif case == "paced":
        # Calls spread over more than the server's connection age: it says
        # GOAWAY meanwhile, and every call must still be answered.
        unary = method(channel, "unary_unary", "Unary")
        for i in range(12):
            expect(unary(b"paced %d" % i, timeout=10) == b"paced %d" % i, "paced call %d" % i)
            time.sleep(0.15)
    elif case == "unavailable":
        try:
            method(channel, "unary_unary", "Unary")(b"hello", timeout=10)
            expect(False, "a call with no server returned")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE (%s: %s)" % (e.code(), e.details()))
    elif case == "status":
        message = "no such ledger: ünïcödé, 100% sure"
        try:
            method(channel, "unary_unary", "Status")(("NOT_FOUND " + message).encode(), timeout=10)
            expect(False, "the call returned")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.NOT_FOUND, "the server's status (%s)" % e.code())
            expect(e.details() == message, "its message intact (%r)" % e.details())
    else:
        expect(False, "no case " + case)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3:])
    else:
        client(sys.argv[2], sys.argv[3])
