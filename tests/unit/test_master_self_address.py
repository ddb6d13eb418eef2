from kubeling.master.server import self_address


def test_own_controllers_use_the_first_listen_address() -> None:
    assert self_address("0.0.0.0:6443", 6443) == "127.0.0.1:6443"
    assert self_address("127.0.0.1:0", 41234) == "127.0.0.1:41234"
    assert self_address("10.99.0.1:6443,unix:/tmp/m.sock", 6443) == "10.99.0.1:6443"
    assert self_address("unix:/tmp/m.sock,10.99.0.1:6443", 1) == "unix:/tmp/m.sock"
    assert self_address("[::]:6443", 6443) == "127.0.0.1:6443"
    assert self_address("[fd00::1]:6443", 6443) == "[fd00::1]:6443"
