"""A failed request is one line; a server that went away is named as such, whatever the transport says."""
from client.runners import describe_failure


def test_transport_errors_of_a_dead_server_read_as_server_gone():
    from tritonclient.utils import InferenceServerException

    gone = [ConnectionRefusedError(111, "Connection refused"), ConnectionResetError("reset by peer"),
            InferenceServerException("[StatusCode.UNAVAILABLE] failed to connect to all addresses; last error: "
                                     "UNKNOWN: ipv4:127.0.0.1:8001: Failed to connect to remote host"),
            InferenceServerException("[StatusCode.UNAVAILABLE] Socket closed"), BrokenPipeError()]
    for exc in gone:
        assert describe_failure(exc).startswith("the server is gone"), exc
    assert describe_failure(InferenceServerException("[StatusCode.DEADLINE_EXCEEDED] Deadline Exceeded")) \
        .startswith("no answer within the timeout")
    other = InferenceServerException("unexpected shape for input 'images'\nsecond line")
    assert describe_failure(other) == "unexpected shape for input 'images'"
    assert describe_failure(RuntimeError()) == "RuntimeError"
