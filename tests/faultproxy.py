"""A TCP proxy on 127.0.0.1 that can cut a database off from its clients.

    proxy = FaultProxy("127.0.0.1", 5432)   # listens on 127.0.0.1:proxy.port
    ...                                      # clients connect through it
    proxy.cut()        # reset every connection and refuse new ones
    proxy.blackhole()  # keep connections open but let nothing through
    proxy.close()

Threads only; it never talks to any address but the target it is given.
"""

import socket
import struct
import threading


class FaultProxy:
    def __init__(self, host, port):
        self.target = (host, int(port))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets = set()
        self.mutex = threading.Lock()
        self.closed = False
        self.dropping = False  # blackhole: read and discard everything
        self.accepted = 0
        self.thread = threading.Thread(
            target=self._accept, name="faultproxy-accept", daemon=True
        )
        self.thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # the listener was shut down
            with self.mutex:
                if self.closed:
                    client.close()
                    return
                self.accepted += 1
                self.sockets.add(client)
            if self.dropping:
                self._pump(client, None)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self.mutex:
                self.sockets.add(server)
            self._pump(client, server)
            self._pump(server, client)

    def _pump(self, source, sink):
        def run():
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if self.dropping or sink is None:
                    continue
                try:
                    sink.sendall(data)
                except OSError:
                    break
            self._reset(source)
            if sink is not None:
                self._reset(sink)

        threading.Thread(target=run, name="faultproxy-pump", daemon=True).start()

    def _reset(self, sock):
        """Close with an RST (SO_LINGER 0), waking any thread blocked on it."""
        with self.mutex:
            if sock not in self.sockets:
                return
            self.sockets.discard(sock)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            sock.shutdown(
                socket.SHUT_RD
            )  # wakes a recv() in another thread; sends nothing
        except OSError:
            pass
        sock.close()

    def _stop_listening(self):
        with self.mutex:
            self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.listener.close()

    def cut(self):
        """Reset every connection and refuse new ones: the server is gone."""
        self._stop_listening()
        with self.mutex:
            sockets = list(self.sockets)
        for sock in sockets:
            self._reset(sock)
        self.thread.join(5)

    def blackhole(self):
        """Let nothing through, in either direction, on old and new connections."""
        self.dropping = True

    def close(self):
        self.cut()
