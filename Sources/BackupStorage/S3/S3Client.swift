import Crypto
import Foundation
import Logging
import ProcessSignals

/// An S3 response with its body read whole (every response we ask for is bounded: a part, a
/// range, a listing page).
typealias S3Response = HTTPResponse

/// A minimal, synchronous S3 REST client: SigV4, retries with backoff and jitter, XML errors.
final class S3Client: Sendable {
    let configuration: S3Configuration
    private let signer: SigV4Signer
    private let transport: HTTPTransport
    /// Retries are logged (warning): a slow or flaky endpoint shows before it makes a run fail.
    private let logger = Logger(label: "dbrecovery.s3")

    init(_ configuration: S3Configuration) {
        self.configuration = configuration
        signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region)
        // One idle connection per thread that may send at once: the parts in flight, or a WAL pusher's
        // or prefetcher's jobs (8 by default), plus the one that lists or completes.
        transport = HTTPTransport(idleTimeout: configuration.requestTimeout, maxIdleHandles: max(9, configuration.concurrency + 1))
    }

    /// The public URL-ish name of an object, for messages.
    func describe(_ key: String) -> String { "s3://\(configuration.bucket)/\(key)" }

    /// Sends one request, retrying 5xx, SlowDown, dropped connections and timeouts.
    ///
    /// - Parameter acceptable: statuses that are answers rather than errors (e.g. 404 for HEAD).
    /// - Throws: `StorageError(.remote)` with S3's code and message, or when retries ran out.
    ///   - interruptible: a data transfer (part upload, ranged read) that a SIGINT/SIGTERM ends at
    ///     once, mid-body or before its next attempt; clean-up requests (aborts, lock releases) leave it false so that
    ///     they still run after the signal.
    ///   - expectedBytes: the body length a ranged GET must return; a shorter (or longer) answer, even
    ///     one whose headers agree with it, is retried like a dropped transfer.
    func send(_ method: String, key: String?, query: [(String, String)] = [], headers: [String: String] = [:],
              body: Data? = nil, acceptable: Set<Int> = [], interruptible: Bool = false, expectedBytes: Int? = nil) throws -> S3Response {
        var attempt = 0
        var lastProblem = ""
        while true {
            attempt += 1
            if interruptible { try Interruption.check() }
            do {
                let started = Date()
                let response = try sendOnce(method, key: key, query: query, headers: headers, body: body, interruptible: interruptible)
                // -vv: where the time of a run goes, request by request (no header, so no credential).
                logger.debug("S3 \(method) \(key.map(describe) ?? describe("")) sent \(body?.count ?? 0) B, answered \(response.status) with \(response.body.count) B in \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
                if (200..<300).contains(response.status), let expectedBytes, response.body.count != expectedBytes {
                    lastProblem = "\(method) \(key.map(describe) ?? "s3://\(configuration.bucket)") returned \(response.body.count) bytes, expected \(expectedBytes) (short read)"
                    if attempt >= configuration.maxAttempts {
                        throw StorageError(.remote, object: key.map(describe) ?? "s3://\(configuration.bucket)",
                                           message: "gave up after \(attempt) attempts: \(lastProblem)",
                                           hint: "check the endpoint, network and any proxy in between; the stored object was not changed")
                    }
                } else if (200..<300).contains(response.status) || acceptable.contains(response.status) {
                    return response
                } else {
                    let (code, message) = Self.parseError(response.body)
                    let retryable = response.status >= 500 || code == "SlowDown" || code == "RequestTimeout" || code == "InternalError"
                    lastProblem = "\(method) \(key.map(describe) ?? "s3://\(configuration.bucket)") answered \(response.status) \(code ?? "")\(message.map { ": \($0)" } ?? "")"
                    if !retryable || attempt >= configuration.maxAttempts {
                        throw StorageError(code == "InvalidObjectState" ? .archived : response.status == 404 ? .notFound
                                               : response.status == 403 ? .permissionDenied : .remote,
                                           object: key.map(describe) ?? "s3://\(configuration.bucket)", message: lastProblem,
                                           hint: Self.hint(for: code, key: key, bucket: configuration.bucket))
                    }
                }
            } catch let error as HTTPTransportError {
                lastProblem = "\(method) \(key.map(describe) ?? configuration.bucket): \(error)"
                if attempt >= configuration.maxAttempts {
                    throw StorageError(.remote, object: key.map(describe) ?? "s3://\(configuration.bucket)",
                                       message: "gave up after \(attempt) attempts: \(lastProblem)",
                                       hint: "check the endpoint, network and credentials; nothing half-written is visible")
                }
            }
            // Exponential backoff with full jitter: 0.1 s, 0.2 s, 0.4 s … capped at 5 s.
            let ceiling = min(5.0, 0.1 * pow(2.0, Double(attempt - 1)))
            let delay = Double.random(in: ceiling / 2...ceiling)
            // lastProblem names the method, the object and S3's answer: never a header, so no credential.
            logger.warning("S3 attempt \(attempt) of \(configuration.maxAttempts) failed: \(lastProblem); retrying in \(String(format: "%.1f", delay)) s")
            Thread.sleep(forTimeInterval: delay)
        }
    }

    private func sendOnce(_ method: String, key: String?, query: [(String, String)], headers: [String: String], body: Data?,
                          interruptible: Bool) throws -> S3Response {
        let (url, host, encodedPath) = try address(key: key, query: query)
        var signedHeaders = headers
        signedHeaders["host"] = host
        if let body { signedHeaders["content-length"] = String(body.count) }
        let payloadHash = body.map { Data(SHA256.hash(data: $0)).map { String(format: "%02x", $0) }.joined() } ?? SigV4Signer.emptyPayloadHash
        let added = signer.sign(.init(method: method, encodedPath: encodedPath, query: query, headers: signedHeaders, payloadHash: payloadHash), at: Date())
        // Every signed header is sent as signed: libcurl uses a given Host (it would drop a default port
        // the endpoint spelled out) and Content-Length instead of its own.
        var requestHeaders = signedHeaders.merging(added, uniquingKeysWith: { _, new in new })
            .sorted { $0.key < $1.key }.map { (name: $0.key, value: $0.value) }
        if body != nil && headers["content-type"] == nil { requestHeaders.append((name: "content-type", value: "application/octet-stream")) }
        // Bodies as stored: no compressed transfer to decode.
        requestHeaders.append((name: "accept-encoding", value: "identity"))
        return try transport.perform(HTTPRequest(method: method, url: url, headers: requestHeaders, body: body, interruptible: interruptible))
    }

    /// URL, Host header value and canonical path of a request.
    func address(key: String?, query: [(String, String)]) throws -> (URL, String, String) {
        guard let endpoint = configuration.endpoint ?? URL(string: "https://s3.\(configuration.region).amazonaws.com") else {
            throw StorageError(.invalidLocation, object: "s3://\(configuration.bucket)", message: "region '\(configuration.region)' makes no endpoint URL",
                               hint: "set AWS_REGION to a region name such as us-east-1")
        }
        let scheme = endpoint.scheme ?? "https"
        var host = endpoint.host ?? "s3.amazonaws.com"
        if !configuration.pathStyle { host = "\(configuration.bucket).\(host)" }
        if let port = endpoint.port { host += ":\(port)" }
        var path = configuration.pathStyle ? "/\(SigV4Signer.encode(configuration.bucket))" : ""
        if let key { path += "/" + SigV4Signer.encode(key, keepSlash: true) } else if path.isEmpty { path = "/" }
        let queryText = query.map { $0.1.isEmpty && ["uploads", "delete", "lifecycle"].contains($0.0) ? $0.0 : "\(SigV4Signer.encode($0.0))=\(SigV4Signer.encode($0.1))" }
            .joined(separator: "&")
        guard let url = URL(string: "\(scheme)://\(host)\(path)\(queryText.isEmpty ? "" : "?" + queryText)") else {
            throw StorageError(.invalidLocation, object: key.map(describe) ?? "s3://\(configuration.bucket)", message: "cannot form a request URL",
                               hint: "check the bucket name, region and endpoint")
        }
        return (url, host, path)
    }

    // MARK: - Errors

    static func parseError(_ body: Data) -> (String?, String?) {
        let document = XMLNode.parse(body)
        return (document?.first("Code")?.text, document?.first("Message")?.text)
    }

    static func hint(for code: String?, key: String?, bucket: String) -> String? {
        switch code {
        case "InvalidObjectState":
            return "the object is archived in GLACIER: start a restore with aws s3api restore-object --bucket \(bucket) --key \(key ?? "KEY") --restore-request Days=2, then retry when it completes"
        case "NoSuchBucket": return "create the bucket or fix the s3:// address"
        case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
            return "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the ~/.aws/credentials profile) and the bucket policy"
        default: return nil
        }
    }
}

/// Base64 of the MD5 of a body (`Content-MD5`, required by DeleteObjects and PutBucketLifecycle).
func contentMD5(_ body: Data) -> String {
    Data(Insecure.MD5.hash(data: body)).base64EncodedString()
}

/// Lower-case hex of the MD5 of a body: what S3 answers as the ETag of a single-part, unencrypted or SSE-S3 object.
func md5Hex(_ body: Data) -> String {
    Data(Insecure.MD5.hash(data: body)).map { String(format: "%02x", $0) }.joined()
}
