import Foundation
import RecoveryKit

/// Small HTTP servers written in Python, for tests that need an endpoint to answer as moto cannot (or to
/// record what arrived). A test's script defines `class Handler` (an `http.server.BaseHTTPRequestHandler`);
/// the serving part is added here once for all of them: threaded, on the address given (an IPv6 literal
/// too), over TLS when a certificate and key are given, printing its port when it is ready.
public final class PythonHTTPServers {
    private static let serving = """
        import http.server as _http, socket as _socket, ssl as _ssl, sys as _sys
        class _Server(_http.ThreadingHTTPServer):
            daemon_threads = True
            address_family = _socket.AF_INET6 if ":" in _sys.argv[1] else _socket.AF_INET
        _server = _Server((_sys.argv[1], 0), Handler)
        if len(_sys.argv) == 4:
            _context = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
            _context.load_cert_chain(_sys.argv[2], _sys.argv[3])
            _server.socket = _context.wrap_socket(_server.socket, server_side=True)
        print(_server.server_address[1], flush=True)
        _server.serve_forever()
        """

    private let script: String
    private var running: [ChildProcess] = []

    /// `handler`: Python source that defines `class Handler` (imports included).
    public init(handler: String) {
        script = handler + "\n" + Self.serving
    }

    deinit { stop() }

    /// Starts one more server on `address` (over TLS with `tls`: a certificate file and a key file)
    /// and returns its port; `needs` names what the script needs beyond python3, for the failure message.
    public func start(address: String = "127.0.0.1", tls: [String] = [], needs: String = "python3") throws -> Int {
        let server = try ChildProcess(executable: "/usr/bin/env", arguments: ["python3", "-c", script, address] + tls,
                                      stdin: .null, stdout: .pipe, stderr: .null)
        running.append(server)
        guard let port = Int(server.firstLineOfOutput()) else { throw XCTSkipFailure.message("the test server did not start (it needs \(needs))") }
        return port
    }

    /// Stops every server this started.
    public func stop() {
        for server in running {
            server.send(SIGTERM)
            server.waitForExit()
        }
        running = []
    }
}
