import Foundation
import RecoveryKit

extension ChildProcess {
    /// The first line the child writes to its piped stdout (a server announcing its port), read
    /// byte by byte so that nothing after it is consumed.
    public func firstLineOfOutput() -> String {
        var line = ""
        var byte: UInt8 = 0
        while read(standardOutput, &byte, 1) == 1, byte != 10 { line.append(Character(UnicodeScalar(byte))) }
        return line
    }
}

/// A local HTTP endpoint for `--notify-url`: it answers every POST with 204 after appending the
/// body, one a line, to a file, so a tool that has exited has had its event recorded.
public final class NotifyReceiver {
    /// The URL to pass as `--notify-url`.
    public let url: String
    private let server: PythonHTTPServers
    private let file: String

    public init() throws {
        file = TestPaths.temporaryDirectory(prefix: "hook") + "/events"
        server = PythonHTTPServers(handler: """
            import http.server
            class Handler(http.server.BaseHTTPRequestHandler):
                def do_POST(self):
                    body = self.rfile.read(int(self.headers['Content-Length']))
                    open('\(file)', 'ab').write(body + b"\\n")
                    self.send_response(204); self.end_headers()
                def log_message(self, *a): pass
            """)
        url = "http://127.0.0.1:\(try server.start())/hook"
    }

    deinit { stop() }

    /// Every body received so far, one a line (empty when none came).
    public var received: String { (try? String(contentsOfFile: file, encoding: .utf8)) ?? "" }

    public func stop() {
        server.stop()
    }
}
