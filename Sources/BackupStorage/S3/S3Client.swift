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
    private let transport: HTTPTransport
    /// Retries are logged (warning): a slow or flaky endpoint shows before it makes a run fail.
    private let logger = Logger(label: "dbrecovery.s3")

    init(_ configuration: S3Configuration) {
        self.configuration = configuration
        // One idle connection per thread that may send at once: the parts in flight, or a WAL pusher's
        // or prefetcher's jobs (8 by default), plus the one that lists or completes.
        transport = HTTPTransport(idleTimeout: configuration.requestTimeout, lowSpeedLimit: configuration.lowSpeedLimit,
                                  caFile: configuration.caBundle, maxIdleHandles: max(9, configuration.concurrency + 1))
    }

    /// The public URL-ish name of an object, for messages.
    func describe(_ key: String) -> String { "s3://\(configuration.bucket)/\(key)" }

    /// Sends one request, retrying 5xx, SlowDown, dropped connections and timeouts.
    ///
    /// - Parameter acceptable: statuses that are answers rather than errors (e.g. 404 for HEAD).
    /// - Throws: `StorageError(.remote)` with S3's code and message, or when retries ran out.
    ///   - interruptible: true for a request of the run's own work (a read, a listing, an upload, a HEAD) that a
    ///     SIGINT/SIGTERM ends at once, mid-body, during the pause before a retry or before its next attempt;
    ///     false for clean-up requests (lock record reads, the checks of what landed) so that they still run
    ///     after the signal. nil decides by the request (`interruptibleByDefault`).
    ///   - expectedBytes: the body length a ranged GET must return; a shorter (or longer) answer, even
    ///     one whose headers agree with it, is retried like a dropped transfer.
    func send(_ method: String, key: String?, query: [(String, String)] = [], headers: [String: String] = [:],
              body: Data? = nil, acceptable: Set<Int> = [], interruptible: Bool? = nil, expectedBytes: Int? = nil) throws -> S3Response {
        let interruptible = interruptible ?? Self.interruptibleByDefault(method, query: query)
        var attempt = 0
        var lastProblem = ""
        while true {
            attempt += 1
            if interruptible { try Interruption.check() }
            // Temporary credentials are renewed here before they expire (a run may outlive them).
            let credentials = try configuration.credentials.current()
            do {
                let started = Date()
                let response = try sendOnce(method, key: key, query: query, headers: headers, body: body, interruptible: interruptible,
                                            credentials: credentials)
                // -vv: where the time of a run goes, request by request (no header, so no credential).
                logger.debug("S3 \(method) \(key.map(describe) ?? describe("")) sent \(body?.count ?? 0) B, answered \(response.status) with \(response.body.count) B in \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
                // CompleteMultipartUpload, CopyObject and UploadPartCopy can answer 200 and fail in the body.
                let embedded = (200..<300).contains(response.status) && Self.mayFailInsideA200(method, query: query, headers: headers)
                    ? Self.embeddedError(response.body) : nil
                if (200..<300).contains(response.status), let expectedBytes, response.body.count != expectedBytes {
                    lastProblem = "\(method) \(key.map(describe) ?? "s3://\(configuration.bucket)") returned \(response.body.count) bytes, expected \(expectedBytes) (short read)"
                    if attempt >= configuration.maxAttempts {
                        throw StorageError(.remote, object: key.map(describe) ?? "s3://\(configuration.bucket)",
                                           message: "gave up after \(attempt) attempts: \(lastProblem)",
                                           hint: "check the endpoint, network and any proxy in between; the stored object was not changed")
                    }
                } else if embedded == nil && ((200..<300).contains(response.status) || acceptable.contains(response.status)) {
                    return response
                } else {
                    let (code, message) = embedded ?? Self.parseError(response.body)
                    // Temporary credentials S3 says have expired (this clock behind S3's): renewed, and the request sent again.
                    var renewed = false
                    // A HEAD's 400 has no body to say ExpiredToken: with temporary credentials it is taken for one.
                    let expired = code == "ExpiredToken" || (method == "HEAD" && response.status == 400 && code == nil)
                    if expired && configuration.credentials.refreshes {
                        renewed = try configuration.credentials.renew(replacing: credentials) != credentials
                    }
                    let retryable = renewed || response.status >= 500 || ["SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"].contains(code ?? "")
                    // A HEAD's error has no body: the status's meaning stands in for S3's code.
                    let answer = code.map { "\($0)\(message.map { ": \($0)" } ?? "")" } ?? Self.meaning(of: response.status)
                    lastProblem = "\(method) \(key.map(describe) ?? "s3://\(configuration.bucket)") answered \(response.status)"
                        + (embedded == nil ? " " : " with an error inside: ") + answer
                        + (renewed ? " (renewed the credentials from the \(configuration.credentials.description))" : "")
                    if !retryable || attempt >= configuration.maxAttempts {
                        throw StorageError(code == "InvalidObjectState" ? .archived : response.status == 404 ? .notFound
                                               : response.status == 403 ? .permissionDenied : .remote,
                                           object: key.map(describe) ?? "s3://\(configuration.bucket)", message: lastProblem,
                                           hint: expired && configuration.credentials.refreshes
                                               ? "S3 refuses the newest credentials from the \(configuration.credentials.description) as expired: check this machine's clock (timedatectl, chrony) and the role's session"
                                               : Self.hint(for: code, key: key, bucket: configuration.bucket, status: response.status,
                                                           bucketRegion: response.header("x-amz-bucket-region")))
                    }
                }
            } catch let error as HTTPTransportError {
                lastProblem = "\(method) \(key.map(describe) ?? "s3://\(configuration.bucket)"): \(error)"
                // A certificate no trusted CA signed stays so: asking again only delays the hint.
                let untrusted = Self.untrustedCertificateCodes.contains(error.code)
                if untrusted || attempt >= configuration.maxAttempts {
                    throw StorageError(.remote, object: key.map(describe) ?? "s3://\(configuration.bucket)",
                                       message: untrusted ? lastProblem : "gave up after \(attempt) attempts: \(lastProblem)",
                                       hint: Self.hint(for: error, caBundle: configuration.caBundle))
                }
            }
            // A failure the signal's arrival met is not worth a retry or a warning: the run is over.
            if interruptible { try Interruption.check() }
            // Exponential backoff with full jitter: 0.1 s, 0.2 s, 0.4 s … capped at 5 s.
            let ceiling = min(5.0, 0.1 * pow(2.0, Double(attempt - 1)))
            let delay = Double.random(in: ceiling / 2...ceiling)
            // lastProblem names the method, the object and S3's answer: never a header, so no credential.
            logger.warning("S3 attempt \(attempt) of \(configuration.maxAttempts) failed: \(lastProblem); retrying in \(String(format: "%.1f", delay)) s")
            try Interruption.pause(delay, interruptible: interruptible)
        }
    }

    /// Whether a request no caller said otherwise of ends at a signal: deletes (an upload's abort, DeleteObjects,
    /// a lock's conditional delete) never, being the clean-up's; any other request when it begins before the
    /// signal, since one begun after it is the clean-up's too (the check of what landed, the lock's release).
    static func interruptibleByDefault(_ method: String, query: [(String, String)]) -> Bool {
        method != "DELETE" && !(method == "POST" && query.contains { $0.0 == "delete" }) && !Interruption.isRequested
    }

    /// The pause before a retry; a signal ends an interruptible request's pause (no new attempt starts).
    private func sendOnce(_ method: String, key: String?, query: [(String, String)], headers: [String: String], body: Data?,
                          interruptible: Bool, credentials: AWSCredentials) throws -> S3Response {
        let (url, host, encodedPath) = try address(key: key, query: query)
        var signedHeaders = headers
        signedHeaders["host"] = host
        if let body { signedHeaders["content-length"] = String(body.count) }
        let payloadHash = body.map { Data(SHA256.hash(data: $0)).map { String(format: "%02x", $0) }.joined() } ?? SigV4Signer.emptyPayloadHash
        let signer = SigV4Signer(credentials: credentials, region: configuration.region)
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
    ///
    /// An endpoint with a path (`http://host:port/gateway/s3`, a gateway that serves S3 under a prefix)
    /// puts that path before every request's, signed with it, as botocore does; an IPv6 literal keeps its brackets.
    func address(key: String?, query: [(String, String)]) throws -> (URL, String, String) {
        guard let endpoint = configuration.endpoint ?? URL(string: "https://s3.\(configuration.region).amazonaws.com") else {
            throw StorageError(.invalidLocation, object: "s3://\(configuration.bucket)", message: "region '\(configuration.region)' makes no endpoint URL",
                               hint: "set AWS_REGION to a region name such as us-east-1")
        }
        let scheme = endpoint.scheme ?? "https"
        // URLComponents keeps an IPv6 literal's brackets ("[::1]"), which URL.host drops.
        var host = URLComponents(url: endpoint, resolvingAgainstBaseURL: false)?.percentEncodedHost ?? endpoint.host ?? "s3.amazonaws.com"
        if !configuration.pathStyle { host = "\(configuration.bucket).\(host)" }
        if let port = endpoint.port { host += ":\(port)" }
        // The endpoint's own path, decoded and encoded the way the rest of the path is, so that what is sent is what is signed.
        var base = endpoint.path
        while base.hasSuffix("/") { base.removeLast() }
        var path = base.isEmpty ? "" : SigV4Signer.encode(base, keepSlash: true)
        if configuration.pathStyle { path += "/\(SigV4Signer.encode(configuration.bucket))" }
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

    /// Whether S3 may answer this request 200 with an `<Error>` document as its body (CompleteMultipartUpload:
    /// a POST with an uploadId; CopyObject and UploadPartCopy: a PUT with x-amz-copy-source), which is the
    /// error it holds, retried like a 500 when it is InternalError or SlowDown.
    static func mayFailInsideA200(_ method: String, query: [(String, String)], headers: [String: String]) -> Bool {
        (method == "POST" && query.contains { $0.0 == "uploadId" }) || (method == "PUT" && headers["x-amz-copy-source"] != nil)
    }

    /// S3's code and message when `body` is an `<Error>` document, else nil.
    static func embeddedError(_ body: Data) -> (String?, String?)? {
        guard let document = XMLNode.parse(body), document.name == "Error" else { return nil }
        return (document.first("Code")?.text ?? "InternalError", document.first("Message")?.text)
    }

    /// Errors libcurl gives for a certificate it cannot trust (60) or a CA file it cannot use (77).
    static let untrustedCertificateCodes: Set<Int> = [60, 77]

    /// The hint for a request that got no complete answer.
    static func hint(for error: HTTPTransportError, caBundle: String?) -> String {
        if untrustedCertificateCodes.contains(error.code) {
            return caBundle.map { "the endpoint's certificate is not signed by a CA in AWS_CA_BUNDLE (\($0)): set it to the PEM file of the CA that signed it" }
                ?? "the endpoint's certificate is not signed by a CA this system trusts: if a private CA signed it, set AWS_CA_BUNDLE to that CA's PEM file"
        }
        if error.code == 28 {
            return "the endpoint stalled or moved data too slowly: check the network and any proxy in between; DBRECOVERY_S3_TIMEOUT_SECONDS "
                + "and DBRECOVERY_S3_LOW_SPEED_LIMIT set the bounds; nothing half-written is visible"
        }
        return "check the endpoint, network and credentials; nothing half-written is visible"
    }

    /// What an HTTP status means, for an answer without an S3 error document (a HEAD's).
    static func meaning(of status: Int) -> String {
        switch status {
        case 301, 307: return "(redirect: the bucket is in another region or behind another endpoint)"
        case 400: return "(Bad Request)"
        case 403: return "(Forbidden: access denied, or a request signed with a wrong clock or credentials)"
        case 404: return "(Not Found)"
        case 405: return "(Method Not Allowed)"
        case 409: return "(Conflict)"
        case 412: return "(Precondition Failed)"
        case 416: return "(Range Not Satisfiable)"
        case 500: return "(Internal Server Error)"
        case 501: return "(Not Implemented by this endpoint)"
        case 502: return "(Bad Gateway)"
        case 503: return "(Service Unavailable: slow down)"
        case 504: return "(Gateway Timeout)"
        default: return "(HTTP status \(status))"
        }
    }

    static func hint(for code: String?, key: String?, bucket: String, status: Int? = nil, bucketRegion: String? = nil) -> String? {
        let region = bucketRegion.map { "the bucket is in \($0): set AWS_REGION=\($0) (or --s3-region \($0))" }
        switch code {
        case "InvalidObjectState":
            return "the object is archived in GLACIER: start a restore with aws s3api restore-object --bucket \(bucket) --key \(key ?? "KEY") --restore-request Days=2, then retry when it completes"
        case "NoSuchBucket": return "create the bucket or fix the s3:// address"
        case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
            return "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the ~/.aws/credentials profile) and the bucket policy"
        case "RequestTimeTooSkewed":
            return "this machine's clock is more than 15 minutes off S3's: fix the clock (timedatectl, chrony or ntpd), then run again"
        case "ExpiredToken", "TokenRefreshRequired", "InvalidToken":
            return "the temporary credentials (AWS_SESSION_TOKEN) have expired or are not valid: get fresh ones (aws sts, aws sso login) and run again"
        case "AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException", "AuthorizationQueryParametersError":
            return region ?? "the bucket is in another region than AWS_REGION: set AWS_REGION (or --s3-region) to the bucket's region"
        case nil where status == 301 || status == 307:
            return region ?? "the bucket is in another region than AWS_REGION, or behind another endpoint: set AWS_REGION (or --s3-region) or --s3-endpoint"
        case nil where status == 403:
            return "check the credentials and the bucket policy, and that this machine's clock is right (a HEAD's 403 does not say which)"
        default: return nil
        }
    }
}

/// Base64 of the MD5 of a body (`Content-MD5`, required by DeleteObjects and PutBucketLifecycle).
func contentMD5(_ body: Data) -> String {
    Data(Insecure.MD5.hash(data: body)).base64EncodedString()
}

/// Lower-case hex of an MD5: what S3 answers as the ETag of a single-part, unencrypted or SSE-S3 object.
func md5Hex(_ digest: Insecure.MD5Digest) -> String {
    digest.map { String(format: "%02x", $0) }.joined()
}
