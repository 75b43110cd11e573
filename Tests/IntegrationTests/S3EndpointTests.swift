@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The S3 client against endpoints moto cannot play (attack report on the libcurl transport, items
/// 8, 9, 11, 12, 15): a small server that checks every request's SigV4 signature with botocore (the
/// AWS SDK's own code) and answers as S3 does in its odd cases — a 200 whose body is an `<Error>`, a
/// HEAD's bare 301 — served at a path, on an IPv6 literal, or over TLS signed by a private CA.
final class S3EndpointTests: XCTestCase {
    private let servers = PythonHTTPServers(handler: #"""
        import re, socket, sys, http.server
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        seen = {}
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *args): pass
            def answer(self, status, body=b"", headers=()):
                self.send_response(status)
                for name, value in headers: self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD": self.wfile.write(body)
            def signed(self, body):
                found = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d+/([^/]+)/s3/aws4_request, SignedHeaders=([^,]+), Signature=(\w+)",
                                 self.headers.get("Authorization", ""))
                if not found: return False
                key, region, names, signature = found.groups()
                request = AWSRequest(method=self.command, url="http://" + self.headers["Host"] + self.path,
                                     headers={name: self.headers.get(name) for name in names.split(";")}, data=body)
                request.context["timestamp"] = self.headers["x-amz-date"]
                signer = S3SigV4Auth(Credentials(key, "test-secret-key"), "s3", region)
                canonical = signer.canonical_request(request)
                return signer.signature(signer.string_to_sign(request, canonical), request) == signature
            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.signed(body):
                    return self.answer(403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>botocore disagrees</Message></Error>")
                path = self.path.split("?")[0]
                count = seen[(self.command, path)] = seen.get((self.command, path), 0) + 1
                counted = [("x-seen", str(count))]
                if self.command == "HEAD" and path.endswith("/moved"):
                    return self.answer(301, headers=[("x-amz-bucket-region", "eu-west-1")])
                if self.command == "POST" and "uploadId=" in self.path:
                    code = "AccessDenied" if path.endswith("/denied") else "InternalError" if count == 1 else None
                    if code:
                        return self.answer(200, f"<Error><Code>{code}</Code><Message>we are sorry</Message></Error>".encode(), counted)
                    return self.answer(200, b"<CompleteMultipartUploadResult><ETag>\"e-2\"</ETag></CompleteMultipartUploadResult>", counted)
                if self.command == "PUT" and self.headers.get("x-amz-copy-source"):
                    if count == 1:
                        return self.answer(200, b"<Error><Code>SlowDown</Code><Message>reduce your rate</Message></Error>", counted)
                    return self.answer(200, b"<CopyObjectResult><ETag>\"c\"</ETag></CopyObjectResult>", counted)
                self.answer(200, ("object at " + path).encode(), counted)
            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any
        """#)


    override func tearDown() {
        servers.stop()
    }

    /// Starts the server on `address` (over TLS with the certificate and key files given) and returns its port.
    private func startServer(_ address: String = "127.0.0.1", tls: [String] = []) throws -> Int {
        try servers.start(address: address, tls: tls, needs: "python3 with botocore, which moto brings")
    }

    private func store(endpoint: String, _ extra: [String: String] = [:]) throws -> S3Store {
        let environment = ["AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "test-secret-key", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL_S3": endpoint, "DBRECOVERY_S3_MAX_ATTEMPTS": "3"].merging(extra) { $1 }
        return S3Store(configuration: try S3Settings.configuration(bucket: "acme", environment: environment), prefix: "app")
    }

    /// Item 8: a gateway serving S3 under a path gets that path before every request's, signed with it (as boto3 sends it).
    func testAnEndpointWithAPathPutsItBeforeEveryRequestAndSignsIt() throws {
        let port = try startServer()
        let store = try store(endpoint: "http://127.0.0.1:\(port)/gateway/s3/")
        XCTAssertEqual(String(decoding: try store.read("backups/a b+c.json"), as: UTF8.self), "object at /gateway/s3/acme/app/backups/a%20b%2Bc.json")
        try store.write("wal/x.gz", contents: Data("payload".utf8))
        // The server's check is real: a request signed with another secret is refused.
        XCTAssertThrowsError(try self.store(endpoint: "http://127.0.0.1:\(port)/gateway/s3", ["AWS_SECRET_ACCESS_KEY": "another"]).read("k")) { error in
            XCTAssertTrue("\(error)".contains("SignatureDoesNotMatch"), "\(error)")
        }
    }

    /// Item 12: an IPv6 literal endpoint keeps its brackets in the URL and the signed Host.
    func testAnIPv6LiteralEndpointIsReached() throws {
        let port = try startServer("::1")
        let store = try store(endpoint: "http://[::1]:\(port)")
        XCTAssertEqual(String(decoding: try store.read("k"), as: UTF8.self), "object at /acme/app/k")
    }

    /// Item 9: S3 documents that CompleteMultipartUpload and CopyObject may answer 200 with an error
    /// inside; InternalError and SlowDown there are retried like a 500, anything else is the error it says.
    func testA200WithAnErrorInsideIsRetriedOrReportedNotTakenForSuccess() throws {
        let port = try startServer()
        let client = try store(endpoint: "http://127.0.0.1:\(port)").client
        let body = Data("<CompleteMultipartUpload></CompleteMultipartUpload>".utf8)
        let completed = try client.send("POST", key: "app/big", query: [("uploadId", "u1")], headers: ["content-type": "application/xml"], body: body)
        XCTAssertEqual(completed.header("x-seen"), "2", "the 200 InternalError was retried")
        XCTAssertTrue(String(decoding: completed.body, as: UTF8.self).contains("CompleteMultipartUploadResult"))

        XCTAssertThrowsError(try client.send("POST", key: "app/denied", query: [("uploadId", "u2")], body: body)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("answered 200 with an error inside: AccessDenied"), message)
            XCTAssertEqual((error as? StorageError)?.kind, .remote)
        }
        let copied = try client.send("PUT", key: "app/copied", headers: ["x-amz-copy-source": "/acme/app/copied", "x-amz-storage-class": "GLACIER"])
        XCTAssertEqual(copied.header("x-seen"), "2", "the 200 SlowDown on CopyObject was retried")
        // An object whose bytes happen to be an error document is still just an object when read.
        XCTAssertEqual(try client.send("GET", key: "app/plain").status, 200)
    }

    /// Item 15: a HEAD's error has no body; the status's meaning and, for a redirect, the bucket's region stand in.
    func testAHeadRedirectNamesTheBucketsRegion() throws {
        let port = try startServer()
        XCTAssertThrowsError(try store(endpoint: "http://127.0.0.1:\(port)").objectInfo("moved")) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("answered 301 (redirect"), message)
            XCTAssertEqual((error as? StorageError)?.hint, "the bucket is in eu-west-1: set AWS_REGION=eu-west-1 (or --s3-region eu-west-1)")
        }
    }

    /// Item 11: AWS_CA_BUNDLE (the AWS CLI's variable) is the CA file libcurl trusts; without it, an endpoint
    /// signed by a private CA fails at once (not after every retry) with a hint naming the variable.
    func testAWSCABundleTrustsAPrivateCAAndTheRefusalNamesIt() throws {
        let directory = TestPaths.temporaryDirectory(prefix: "private-ca")
        let openssl = { (arguments: [String]) throws in
            let result = try TestProcess.run("/usr/bin/env", ["openssl"] + arguments)
            XCTAssertEqual(result.status, 0, result.standardError)
        }
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test private CA",
                     "-keyout", directory + "/ca.key", "-out", directory + "/ca.pem"])
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", directory + "/server.key", "-out", directory + "/server.csr"])
        try "subjectAltName=IP:127.0.0.1\n".write(toFile: directory + "/san.ext", atomically: true, encoding: .utf8)
        try openssl(["x509", "-req", "-in", directory + "/server.csr", "-CA", directory + "/ca.pem", "-CAkey", directory + "/ca.key",
                     "-CAcreateserial", "-days", "1", "-extfile", directory + "/san.ext", "-out", directory + "/server.pem"])
        let port = try startServer(tls: [directory + "/server.pem", directory + "/server.key"])
        let endpoint = "https://127.0.0.1:\(port)"

        let started = Date()
        XCTAssertThrowsError(try store(endpoint: endpoint, ["DBRECOVERY_S3_MAX_ATTEMPTS": "8"]).read("k")) { error in
            XCTAssertTrue("\(error)".contains("curl error 60"), "\(error)")
            XCTAssertFalse("\(error)".contains("gave up after"), "an untrusted certificate is not retried: \(error)")
            XCTAssertTrue((error as? StorageError)?.hint?.contains("set AWS_CA_BUNDLE to that CA's PEM file") == true, "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "no backoff between attempts that cannot succeed")

        let trusted = try store(endpoint: endpoint, ["AWS_CA_BUNDLE": directory + "/ca.pem"])
        XCTAssertEqual(String(decoding: try trusted.read("k"), as: UTF8.self), "object at /acme/app/k")

        XCTAssertThrowsError(try store(endpoint: endpoint, ["AWS_CA_BUNDLE": directory + "/missing.pem"])) { error in
            XCTAssertTrue("\(error)".contains("AWS_CA_BUNDLE"), "\(error)")
        }
    }
}
