import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The HTTP transport under S3 and the run notification (libcurl's easy interface), against a small
/// local server that shows what arrived and answers in the ways S3 and proxies do: headers in any case,
/// a compressed body that must stay compressed, silence, a slow trickle.
final class HTTPTransportTests: XCTestCase {
    private let servers = PythonHTTPServers(handler: #"""
        import gzip, http.server, json, sys, time
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *args): pass
            def answer(self, body, headers=()):
                self.send_response(200)
                for name, value in headers: self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def do_GET(self):
                if self.path == "/headers":
                    self.answer(gzip.compress(b"stored as sent" * 100), [("X-Mixed-CASE", "a"), ("x-twice", "1"), ("X-Twice", "2"), ("Content-Encoding", "gzip")])
                elif self.path == "/silent":
                    time.sleep(30)
                elif self.path == "/trickle":
                    self.send_response(200); self.send_header("Content-Length", "8"); self.end_headers(); self.wfile.flush()
                    for byte in b"trickled":
                        time.sleep(0.6); self.wfile.write(bytes([byte])); self.wfile.flush()
                elif self.path == "/dribble":
                    self.send_response(200); self.send_header("Content-Length", "400"); self.end_headers(); self.wfile.flush()
                    for _ in range(400):
                        time.sleep(0.05); self.wfile.write(b"d"); self.wfile.flush()
            def do_PUT(self):
                length = int(self.headers.get("Content-Length", "0"))
                received = self.rfile.read(length)
                if self.path == "/keepalive":
                    # CompleteMultipartUpload's way: 200 at once, a space now and then while it works, then the result.
                    self.send_response(200); self.send_header("Content-Length", "16"); self.end_headers(); self.wfile.flush()
                    for _ in range(6):
                        time.sleep(0.5); self.wfile.write(b" "); self.wfile.flush()
                    self.wfile.write(b"<Done/>ok\n"); self.wfile.flush()
                    return
                seen = {name.lower(): value for name, value in self.headers.items()}
                self.answer(json.dumps({"method": self.command, "headers": seen, "length": len(received)}).encode())
            do_POST = do_PUT
        """#)

    private var base = ""


    override func setUpWithError() throws {
        base = "http://127.0.0.1:\(try servers.start())"
    }

    override func tearDown() {
        servers.stop()
    }

    private func url(_ path: String) throws -> URL { try XCTUnwrap(URL(string: base + path)) }

    func testHeadersAreFoundInAnyCaseAndACompressedBodyStaysCompressed() throws {
        let response = try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "GET", url: try url("/headers")))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.header("x-mixed-case"), "a")
        XCTAssertEqual(response.header("X-TWICE"), "1, 2", "a repeated header keeps both values")
        XCTAssertEqual(response.header("content-encoding"), "gzip")
        XCTAssertEqual(response.body.prefix(2), Data([0x1F, 0x8B]), "the body as the server sent it, not decompressed")
    }

    func testABigBodyGoesWithoutExpectContinueOrAFormContentType() throws {
        let body = Data(repeating: 0x5A, count: 3 << 20)
        let transport = HTTPTransport(idleTimeout: 5)
        let response = try transport.perform(HTTPRequest(method: "PUT", url: try url("/part"), headers: [(name: "X-Amz-Meta-Note", value: "kept")], body: body))
        let seen = try XCTUnwrap(try JSONSerialization.jsonObject(with: response.body) as? [String: Any])
        let headers = try XCTUnwrap(seen["headers"] as? [String: String])
        XCTAssertEqual(seen["method"] as? String, "PUT")
        XCTAssertEqual(seen["length"] as? Int, body.count)
        XCTAssertNil(headers["expect"], "no Expect: 100-continue (a round trip per part): \(headers)")
        XCTAssertNil(headers["content-type"], "no form encoding announced for a body that is not a form: \(headers)")
        XCTAssertEqual(headers["x-amz-meta-note"], "kept")
        // An empty PUT (a server-side copy) still sends a body of 0 bytes, and the next request reuses the handle.
        let empty = try transport.perform(HTTPRequest(method: "PUT", url: try url("/copy")))
        let emptySeen = try XCTUnwrap(try JSONSerialization.jsonObject(with: empty.body) as? [String: Any])
        XCTAssertEqual(emptySeen["length"] as? Int, 0)
        XCTAssertEqual((emptySeen["headers"] as? [String: String])?["content-length"], "0")
    }

    func testSilenceTimesOutButASlowSteadyAnswerDoesNot() throws {
        let transport = HTTPTransport(idleTimeout: 1.5)
        let started = Date()
        XCTAssertThrowsError(try transport.perform(HTTPRequest(method: "GET", url: try url("/silent")))) { error in
            XCTAssertEqual((error as? HTTPTransportError)?.code, 28, "\(error)")
            XCTAssertTrue("\(error)".contains("timed out"), "\(error)")
        }
        let waited = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(waited, 1.4)
        XCTAssertLessThan(waited, 5, "the idle timeout is honoured, not the server's 30 s")
        // 8 bytes over about 5 s, one every 0.6 s: longer than the timeout in all, never idle that long.
        let slow = try transport.perform(HTTPRequest(method: "GET", url: try url("/trickle")))
        XCTAssertEqual(String(decoding: slow.body, as: UTF8.self), "trickled")
    }

    /// A body that keeps moving, a byte every 50 ms, never goes idle: the speed floor ends it after the
    /// idle timeout's worth of seconds below it. A POST answered with a space now and then (as
    /// CompleteMultipartUpload is while S3 works) is not held to the floor.
    func testABodyBelowTheSpeedFloorEndsButAPostsKeepAliveDoesNot() throws {
        let transport = HTTPTransport(idleTimeout: 1.5, lowSpeedLimit: 1024)
        let started = Date()
        XCTAssertThrowsError(try transport.perform(HTTPRequest(method: "GET", url: try url("/dribble")))) { error in
            XCTAssertEqual((error as? HTTPTransportError)?.code, 28, "\(error)")
            XCTAssertTrue("\(error)".contains("too slow"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "cut by the floor, not after the 20 s the dribble takes")
        let kept = try transport.perform(HTTPRequest(method: "POST", url: try url("/keepalive"), body: Data("<Complete/>".utf8)))
        XCTAssertEqual(kept.status, 200)
        XCTAssertEqual(kept.body.count, 16, "the whole keep-alive answer, 3 s long at a byte per 0.5 s")
    }

    /// The test server over TLS with a certificate of its own (for 127.0.0.1, signed by no CA): the
    /// certificate's file, and the server's `/headers` URL.
    private func selfSignedServer() throws -> (certificate: String, url: URL) {
        let directory = TestPaths.temporaryDirectory(prefix: "tls")
        let made = try TestProcess.run("/usr/bin/env", ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                                                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem"])
        XCTAssertEqual(made.status, 0, made.standardError)
        let port = try servers.start(tls: [directory + "/cert.pem", directory + "/key.pem"])
        return (directory + "/cert.pem", try XCTUnwrap(URL(string: "https://127.0.0.1:\(port)/headers")))
    }

    /// A server signed by a private CA is trusted once that CA's file is given (S3's AWS_CA_BUNDLE).
    func testAServerSignedByAGivenCAFileIsTrusted() throws {
        let (certificate, url) = try selfSignedServer()
        let response = try HTTPTransport(idleTimeout: 5, caFile: certificate).perform(HTTPRequest(method: "GET", url: url))
        XCTAssertEqual(response.status, 200)
    }

    func testAnUnreachableServerIsATransportErrorThatNamesTheHost() throws {
        let url = try XCTUnwrap(URL(string: "http://127.0.0.1:1/nothing"))
        XCTAssertThrowsError(try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "GET", url: url))) { error in
            let transportError = error as? HTTPTransportError
            XCTAssertEqual(transportError?.code, 7, "couldn't connect: \(error)")
            XCTAssertTrue("\(error)".contains("127.0.0.1"), "\(error)")
        }
    }

    /// Verification stays on: there is no option to turn it off, so a certificate no CA signed is refused.
    func testAServerWithASelfSignedCertificateIsRefused() throws {
        let (_, url) = try selfSignedServer()
        XCTAssertThrowsError(try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "GET", url: url))) { error in
            XCTAssertEqual((error as? HTTPTransportError)?.code, 60, "peer certificate not verified: \(error)")
            XCTAssertTrue("\(error)".contains("certificate"), "\(error)")
        }
    }
}
