import Foundation
import RecoveryKit
import Synchronization

/// A throwaway S3-compatible server (moto_server) on a free loopback port, started by
/// `scripts/s3-sandbox.sh` and stopped by its PID when the test process exits.
public final class S3Server: Sendable {
    public let directory: String
    public let endpoint: String
    public let port: Int

    private static let sharedServer = Mutex<S3Server?>(nil)

    /// The server shared by all tests in this process.
    public static func shared() throws -> S3Server {
        try sharedServer.withLock { shared in
            if let shared { return shared }
            let server = try S3Server()
            shared = server
            atexit { S3Server.stopShared() }
            return server
        }
    }

    /// Stops the shared server, if one was started (idempotent).
    static func stopShared() {
        sharedServer.withLock { shared in
            defer { shared = nil }
            return shared
        }?.stop()
    }

    init() throws {
        directory = TestPaths.temporaryDirectory(prefix: "s3")
        let result = try TestProcess.run(TestPaths.repositoryRoot + "/scripts/s3-sandbox.sh", ["start", directory])
        guard result.status == 0 else {
            throw XCTSkipFailure.message("could not start moto_server (install it with scripts/setup.sh): \(result.standardError)")
        }
        let values = TestProcess.keyValues(result.standardOutput)
        endpoint = values["ENDPOINT"] ?? ""
        port = Int(values["PORT"] ?? "") ?? 0
    }

    public func stop() {
        _ = try? TestProcess.run(TestPaths.repositoryRoot + "/scripts/s3-sandbox.sh", ["stop", directory])
    }

    /// Creates a fresh bucket and returns its name.
    public func createBucket() throws -> String {
        let name = "bucket-\(UInt32.random(in: 0...UInt32.max))"
        let result = try TestProcess.run("/usr/bin/env", ["python3", "-c", """
            import urllib.request
            urllib.request.urlopen(urllib.request.Request('\(endpoint)/\(name)', method='PUT', headers={'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIDTESTING/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'}))
            """])
        guard result.status == 0 else { throw XCTSkipFailure.message("could not create bucket: \(result.standardError)") }
        return name
    }

    /// Environment for our tools to reach this server (optionally through another endpoint).
    public func environment(endpoint override: String? = nil) -> [String: String] {
        ["AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "test-secret-key", "AWS_REGION": "us-east-1",
         "AWS_ENDPOINT_URL_S3": override ?? endpoint, "DBRECOVERY_S3_PART_SIZE_MB": "5"]
    }
}

/// `scripts/s3-fault-proxy.py` in front of a server: 503s, dropped connections, failing parts.
public final class FaultProxy {
    public let process: ChildProcess
    public let endpoint: String

    public init(upstreamPort: Int, arguments: [String]) throws {
        process = try ChildProcess(executable: "/usr/bin/env",
                                   arguments: ["python3", TestPaths.repositoryRoot + "/scripts/s3-fault-proxy.py", "--upstream", String(upstreamPort)] + arguments,
                                   stdin: .null, stdout: .pipe, stderr: .null)
        let line = process.firstLineOfOutput()
        guard line.hasPrefix("PORT=") else { throw XCTSkipFailure.message("fault proxy did not start") }
        endpoint = "http://127.0.0.1:\(line.dropFirst(5))"
    }

    deinit { stop() }

    public func stop() {
        process.send(SIGTERM)
        process.waitForExit()
    }
}

/// Test-infrastructure failures: thrown, never skipped silently.
public enum XCTSkipFailure: Error, CustomStringConvertible {
    case message(String)
    public var description: String {
        switch self { case .message(let text): return text }
    }
}
