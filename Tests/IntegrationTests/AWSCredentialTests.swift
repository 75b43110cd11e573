@testable import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Credentials a machine on AWS has without keys in its environment — an EC2 instance profile, an ECS
/// task's container credentials, an EKS web identity role — and that expire within hours: found in the
/// SDKs' order, renewed before they expire and when S3 says they have, never shown. A small server plays
/// the metadata services and an S3 that checks each request's signature (botocore's code), session token
/// and expiry; the web identity role is assumed from moto's STS and a real backup made with it.
final class AWSCredentialTests: IntegrationTestCase {
    /// IMDSv2 and the container endpoint hand out numbered credentials lasting `LIFETIME` seconds; S3
    /// answers ExpiredToken to any other, expired or revoked (`POST /control/expire`) credentials.
    private func servers(lifetime: Double) -> PythonHTTPServers {
        PythonHTTPServers(handler: #"""
            import datetime, http.server, json, re, threading, time
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
            LIFETIME = \#(lifetime)
            lock = threading.Lock()
            issued, objects, stats = {}, {}, {"fetches": 0, "refused": 0, "served": 0}
            control = {"fail": 0, "token": "Bearer task-secret", "huge": False, "hang": 0}
            def issue():
                with lock:
                    stats["fetches"] += 1
                    n = stats["fetches"]
                    key, secret, token = f"ASIA{n:04d}", f"secret-{n}", f"token-{n}"
                    issued[key] = {"secret": secret, "token": token, "until": time.time() + LIFETIME}
                expiry = datetime.datetime.fromtimestamp(issued[key]["until"], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                return json.dumps({"Code": "Success", "AccessKeyId": key, "SecretAccessKey": secret, "Token": token, "Expiration": expiry}).encode()
            class Handler(http.server.BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def log_message(self, *args): pass
                def answer(self, status, body=b""):
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD": self.wfile.write(body)
                def refuse(self):
                    with lock: stats["refused"] += 1
                    return self.answer(400, b"<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>")
                def handle_any(self):
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    path, _, query = self.path.partition("?")
                    if path.startswith("/latest/") or path == "/ecs/credentials":
                        with lock:
                            failing = control["fail"] > 0
                            if failing: control["fail"] -= 1
                        if failing: return self.answer(500, b"<html>metadata service busy</html>")
                        if control["hang"] and path.endswith(("/backup-role", "/ecs/credentials")):
                            with lock: stats["hanging"] = stats.get("hanging", 0) + 1
                            time.sleep(control["hang"])
                        if control["huge"] and path.endswith(("/backup-role", "/ecs/credentials")): return self.answer(200, b" " * (2 << 20))
                    if path == "/latest/api/token" and self.command == "PUT" and self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                        return self.answer(200, b"imds-session")
                    if path.startswith("/latest/meta-data/"):
                        if self.headers.get("x-aws-ec2-metadata-token") != "imds-session": return self.answer(401)
                        if path == "/latest/meta-data/iam/security-credentials/": return self.answer(200, b"backup-role\n")
                        if path == "/latest/meta-data/iam/security-credentials/backup-role": return self.answer(200, issue())
                        return self.answer(404)
                    if path == "/ecs/credentials":
                        if self.headers.get("Authorization") != control["token"]: return self.answer(403, b"not this task's")
                        return self.answer(200, issue())
                    if path == "/control/stats": return self.answer(200, json.dumps(stats).encode())
                    if path == "/control/set":
                        with lock:
                            for name, value in (pair.split("=", 1) for pair in query.split("&")):
                                control[name] = int(value) if name in ("fail", "hang") else value == "1" if name == "huge" else value.replace("+", " ")
                        return self.answer(204)
                    if path == "/control/expire":
                        with lock:
                            for entry in issued.values(): entry["until"] = 0
                        return self.answer(204)
                    found = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d+/([^/]+)/s3/aws4_request, SignedHeaders=([^,]+), Signature=(\w+)",
                                     self.headers.get("Authorization", ""))
                    entry = issued.get(found.group(1)) if found else None
                    if not entry or entry["until"] < time.time() or self.headers.get("x-amz-security-token") != entry["token"]:
                        return self.refuse()
                    request = AWSRequest(method=self.command, url="http://" + self.headers["Host"] + self.path,
                                         headers={name: self.headers.get(name) for name in found.group(3).split(";")}, data=body)
                    request.context["timestamp"] = self.headers["x-amz-date"]
                    signer = S3SigV4Auth(Credentials(found.group(1), entry["secret"], entry["token"]), "s3", found.group(2))
                    if signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request) != found.group(4):
                        return self.answer(403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>botocore disagrees</Message></Error>")
                    with lock: stats["served"] += 1
                    if self.command == "PUT":
                        objects[path] = body
                        return self.answer(200)
                    if path in objects: return self.answer(200, objects[path])
                    return self.answer(404, b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>")
                do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any
            """#)
    }

    /// Sets the test server's behaviour: `fail=N` (the next N metadata requests answer 500), `token=…`
    /// (the container token it accepts), `huge=1` (credential documents of 2 MiB).
    private func control(_ port: Int, _ query: String) throws {
        _ = try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "POST", url: try XCTUnwrap(URL(string: "http://127.0.0.1:\(port)/control/set?\(query)"))))
    }

    private func stats(_ port: Int) throws -> [String: Int] {
        let response = try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "GET", url: try XCTUnwrap(URL(string: "http://127.0.0.1:\(port)/control/stats"))))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: response.body) as? [String: Int])
    }

    /// An environment with no keys and no credentials file: only what `extra` sets.
    private func keyless(_ extra: [String: String]) -> [String: String] {
        ["HOME": TestPaths.temporaryDirectory(prefix: "nohome"), "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
         "AWS_REGION": "us-east-1", "DBRECOVERY_S3_MAX_ATTEMPTS": "3"].merging(extra) { $1 }
    }

    func testAnInstanceProfilesCredentialsAreRenewedBeforeTheyExpire() throws {
        let servers = servers(lifetime: 3)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        let configuration = try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(port)", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"]))
        XCTAssertEqual(configuration.credentials.description, "EC2 instance profile")
        let store = S3Store(configuration: configuration, prefix: "app")
        try store.write("wal/a.gz", contents: Data("first".utf8))
        // Past the first credentials' lifetime: without renewal every request from here on is refused.
        Thread.sleep(forTimeInterval: 3.2)
        try store.write("wal/b.gz", contents: Data("second".utf8))
        XCTAssertEqual(try store.read("wal/a.gz"), Data("first".utf8))
        let seen = try stats(port)
        XCTAssertEqual(seen["refused"], 0, "renewed before they expired, not after S3 refused them: \(seen)")
        XCTAssertGreaterThanOrEqual(seen["fetches"] ?? 0, 2, "\(seen)")
        XCTAssertEqual(seen["served"], 3, "\(seen)")
    }

    func testCredentialsS3SaysHaveExpiredAreRenewedOnceAndTheRequestGoesThrough() throws {
        let servers = servers(lifetime: 3600)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        let tokenFile = TestPaths.temporaryDirectory(prefix: "ecs") + "/token"
        try "Bearer task-secret\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let configuration = try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:\(port)/ecs/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": tokenFile,
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"]))
        XCTAssertEqual(configuration.credentials.description, "container credentials")
        let store = S3Store(configuration: configuration, prefix: "app")
        try store.write("backups/x/dump.sql.gz", contents: Data("dump".utf8))
        // Revoked early (an IAM session ended, or this clock runs behind S3's): S3 answers ExpiredToken.
        _ = try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "POST", url: try XCTUnwrap(URL(string: "http://127.0.0.1:\(port)/control/expire"))))
        XCTAssertEqual(try store.read("backups/x/dump.sql.gz"), Data("dump".utf8))
        // A HEAD's 400 carries no body to say ExpiredToken: with temporary credentials it is taken for one too.
        _ = try HTTPTransport(idleTimeout: 5).perform(HTTPRequest(method: "POST", url: try XCTUnwrap(URL(string: "http://127.0.0.1:\(port)/control/expire"))))
        XCTAssertEqual(try store.objectInfo("backups/x/dump.sql.gz").size, 4)
        let seen = try stats(port)
        XCTAssertEqual(seen["refused"], 2, "\(seen)")
        XCTAssertEqual(seen["fetches"], 3, "\(seen)")

        // The wrong task token: refused as a permission problem, naming the source and never the token.
        let wrongFile = TestPaths.temporaryDirectory(prefix: "ecs") + "/token"
        try "Bearer someone-else\n".write(toFile: wrongFile, atomically: true, encoding: .utf8)
        let refused = try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:\(port)/ecs/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": wrongFile,
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"]))
        XCTAssertThrowsError(try S3Store(configuration: refused, prefix: "app").read("backups/x/dump.sql.gz")) { error in
            let failure = error as? StorageError
            XCTAssertEqual(failure?.kind, .permissionDenied, "\(error)")
            XCTAssertTrue("\(error)".contains("container credentials") && "\(error)".contains("403"), "\(error)")
            XCTAssertFalse("\(error)".contains("someone-else"), "\(error)")
        }
        // Clear text to another host would hand the task's credentials to whoever is on the path: a name
        // that only looks local (127.evil.example) included.
        for uri in ["http://credentials.example.com/creds", "http://127.evil.example/creds", "http://127.1/creds"] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: keyless(["AWS_CONTAINER_CREDENTIALS_FULL_URI": uri])), uri) { error in
                XCTAssertTrue("\(error)".contains("not https or a local address"), "\(error)")
            }
        }
    }

    /// The ECS agent rotates the task's token file: each renewal reads it again.
    func testARotatedContainerTokenFileIsReadAgainAtTheNextRenewal() throws {
        let servers = servers(lifetime: 3)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        let tokenFile = TestPaths.temporaryDirectory(prefix: "ecs") + "/token"
        try "Bearer task-secret\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let store = S3Store(configuration: try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:\(port)/ecs/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": tokenFile,
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"])), prefix: "app")
        try store.write("wal/a.gz", contents: Data("first".utf8))
        try control(port, "token=Bearer+rotated-1")
        try "Bearer rotated-1\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        Thread.sleep(forTimeInterval: 3.2)
        XCTAssertEqual(try store.read("wal/a.gz"), Data("first".utf8))
        XCTAssertEqual(try stats(port)["fetches"], 2)
    }

    /// A metadata service that blinks is asked again, never taken for "no credentials here" (which sent
    /// `--emergency` to an older backup in another repository, and a recovery's wal-fetch to exit 126);
    /// the source is found once per process, so a run opening its repository again asks nothing more.
    func testAMetadataServiceThatBlinksIsAskedAgainAndAskedOncePerProcess() throws {
        let servers = servers(lifetime: 3600)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        try control(port, "fail=1")
        let environment = keyless(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(port)", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"])
        let configuration = try S3Settings.configuration(bucket: "acme", environment: environment)
        try S3Store(configuration: configuration, prefix: "app").write("wal/a.gz", contents: Data("first".utf8))
        let again = try S3Settings.configuration(bucket: "acme", environment: environment)
        XCTAssertEqual(try S3Store(configuration: again, prefix: "app").read("wal/a.gz"), Data("first".utf8))
        XCTAssertEqual(try stats(port)["fetches"], 1, "one source per process: the second open fetched nothing")

        // One that keeps failing is the repository's trouble (exit 20), not "no credentials" (exit 2).
        let failing = try servers.start(needs: "python3 with botocore, which moto brings")
        try control(failing, "fail=100")
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(failing)"]))) { error in
            XCTAssertEqual((error as? StorageError)?.kind, .remote, "\(error)")
            XCTAssertTrue("\(error)".contains("answered 500"), "\(error)")
        }
        // An answer larger than any credential document ends the fetch, not the machine's memory.
        let huge = try servers.start(needs: "python3 with botocore, which moto brings")
        try control(huge, "huge=1")
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(huge)"]))) { error in
            XCTAssertTrue("\(error)".contains("larger than"), "\(error)")
        }
    }

    /// SIGTERM while the container endpoint holds the credential request: the run ends at once (exit 130),
    /// not after the fetch's attempts and pauses run out (28 s before).
    func testASignalWhileACredentialFetchHangsEndsTheRunAtOnce() throws {
        try useDatabase(prefix: "credsig", seed: "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
        try useS3Repository(prefix: "app")
        let servers = servers(lifetime: 3600)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        try control(port, "hang=60")
        let process = try TestProcess.start("dbbackup", common, cluster: cluster, environment: s3.environment().merging([
            "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:\(port)/ecs/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Bearer task-secret", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials"]) { $1 })
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 20)
        let deadline = Date().addingTimeInterval(30)
        while (try stats(port)["hanging"] ?? 0) == 0 && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(try stats(port)["hanging"], 1, "the credential request never arrived: \(errors.soFar)")
        let signalled = Date()
        process.send(SIGTERM)
        let termination = process.waitForExit(within: 30, orFail: "dbbackup did not stop within 30 s of SIGTERM: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 130, errors.finish())
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 3, errors.soFar)
    }

    /// A renewal that fails while the held credentials are still good keeps them (the SDKs' way), and
    /// the metadata service is reached directly, never through the proxy the environment names.
    func testAFailedEarlyRenewalKeepsTheHeldCredentialsAndNoProxyIsUsed() throws {
        let servers = servers(lifetime: 30)
        let port = try servers.start(needs: "python3 with botocore, which moto brings")
        let closed = try freePort()
        setenv("http_proxy", "http://127.0.0.1:\(closed)", 1)
        defer { unsetenv("http_proxy") }
        let store = S3Store(configuration: try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(port)", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:\(port)"])), prefix: "app")
        unsetenv("http_proxy")
        try store.write("wal/a.gz", contents: Data("first".utf8))
        // Past the renewal point (a fifth of 30 s before the expiry), the metadata service failing.
        try control(port, "fail=100")
        Thread.sleep(forTimeInterval: 25)
        XCTAssertEqual(try store.read("wal/a.gz"), Data("first".utf8), "the held credentials, valid a few seconds more, were used")
        XCTAssertEqual(try stats(port)["refused"], 0)
    }

    func testWithNoCredentialsAnywhereTheErrorSaysWhereItLookedAtOnce() throws {
        let closed = try freePort()
        let started = Date()
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: keyless([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(closed)"]))) { error in
            let failure = error as? StorageError
            XCTAssertEqual(failure?.kind, .invalidLocation)
            for place in ["AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "profile default", "container", "EC2 instance profile"] {
                XCTAssertTrue(failure?.message.contains(place) ?? false, "\(place) not in: \(error)")
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "one attempt at the metadata service, not a run's worth of retries")
    }

    /// EKS's way: a service account token file and a role, assumed at moto's STS; the tools back up and
    /// restore with no key in their environment.
    func testAWebIdentityRoleBacksUpAndRestoresWithoutKeys() throws {
        try useDatabase(prefix: "webid", seed: "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g")
        try useS3Repository(prefix: "app")
        let tokenFile = TestPaths.temporaryDirectory(prefix: "webid") + "/token"
        try "eyJhbGciOiJSUzI1NiJ9.service-account.signature\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let role = [
            "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/db-backup",
            "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:\(s3.port)", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        ]
        let backup = try tool("dbbackup", common, environment: role)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let printed = try tool("dbbackup", common + ["--print-config"], environment: role)
        XCTAssertTrue(printed.standardOutput.contains("arn:aws:iam::123456789012:role/db-backup"), printed.standardOutput)
        let restored = try tool("dbrestore", ["latest", "--repo", repository, "--database-url", cluster.url(database: database), "--yes"], environment: role)
        XCTAssertEqual(restored.status, 0, restored.standardError)
        // Without the role (and no keys) it is one line that says where it looked.
        var none = role
        none["AWS_ROLE_ARN"] = ""
        let refused = try tool("dbbackup", common, environment: none)
        XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("no AWS credentials found"), refused.standardError)
    }
}
