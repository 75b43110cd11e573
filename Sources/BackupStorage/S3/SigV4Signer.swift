import Crypto
import Foundation
import UTCTime

/// AWS credentials. `description` never shows the secret.
public struct AWSCredentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String { "access key \(accessKeyID) (secret hidden)" }
}

/// AWS Signature Version 4 for S3 requests (header-based, single-chunk payload).
public struct SigV4Signer: Sendable {
    public let credentials: AWSCredentials
    public let region: String
    public let service: String

    public init(credentials: AWSCredentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// A request as the signer sees it.
    public struct Request: Sendable {
        public var method: String
        /// The URI-encoded path, exactly as sent (e.g. `/bucket/backups/x%24y`).
        public var encodedPath: String
        /// Query parameters, not encoded; a valueless sub-resource is `("lifecycle", "")`.
        public var query: [(String, String)]
        /// Headers to sign, including `host`.
        public var headers: [String: String]
        /// Hex sha256 of the body (`UNSIGNED-PAYLOAD` is allowed by S3 but we always hash).
        public var payloadHash: String

        public init(method: String, encodedPath: String, query: [(String, String)] = [], headers: [String: String], payloadHash: String) {
            self.method = method
            self.encodedPath = encodedPath
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }
    }

    /// Hex sha256 of an empty body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// The headers to add to `request`: `x-amz-date`, `x-amz-content-sha256`, the session token if
    /// any, and `Authorization`.
    public func sign(_ request: Request, at date: Date) -> [String: String] {
        var headers = request.headers
        let stamp = Timestamp.compact(date)
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = request.payloadHash
        if let token = credentials.sessionToken { headers["x-amz-security-token"] = token }
        var signed = request
        signed.headers = headers
        let (canonical, signedHeaders) = canonicalRequest(signed)
        let scope = "\(stamp.prefix(8))/\(region)/\(service)/aws4_request"
        let toSign = stringToSign(canonical: canonical, timestamp: stamp, scope: scope)
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Data(toSign.utf8), using: signingKey(day: String(stamp.prefix(8)))))
        var added = headers.filter { request.headers[$0.key] == nil }
        added["Authorization"] = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return added
    }

    /// The canonical request and the signed-header list (exposed for the published test vectors).
    public func canonicalRequest(_ request: Request) -> (String, String) {
        var canonicalHeaders: [(String, String)] = []
        for (name, value) in request.headers {
            let collapsed = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            canonicalHeaders.append((name.lowercased(), collapsed))
        }
        canonicalHeaders.sort { $0.0 < $1.0 }
        let signedHeaders = canonicalHeaders.map(\.0).joined(separator: ";")
        let encoded: [(String, String)] = request.query.map { (Self.encode($0.0), Self.encode($0.1)) }
        let sorted = encoded.sorted { (left: (String, String), right: (String, String)) -> Bool in
            left.0 == right.0 ? left.1 < right.1 : left.0 < right.0
        }
        let query: String = sorted.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        var lines: [String] = [request.method, request.encodedPath.isEmpty ? "/" : request.encodedPath, query]
        lines += canonicalHeaders.map { "\($0.0):\($0.1)" }
        lines += ["", signedHeaders, request.payloadHash]
        return (lines.joined(separator: "\n"), signedHeaders)
    }

    /// The string to sign for a canonical request.
    public func stringToSign(canonical: String, timestamp: String, scope: String) -> String {
        ["AWS4-HMAC-SHA256", timestamp, scope, hex(SHA256.hash(data: Data(canonical.utf8)))].joined(separator: "\n")
    }

    /// HMAC chain: "AWS4"+secret → date → region → service → "aws4_request".
    public func signingKey(day: String) -> SymmetricKey {
        var key = SymmetricKey(data: Data("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        return key
    }

    /// RFC 3986 encoding as SigV4 wants it: everything but `A-Z a-z 0-9 - _ . ~` (and `/` when asked).
    public static func encode(_ text: String, keepSlash: Bool = false) -> String {
        var output = ""
        for byte in text.utf8 {
            let character = Character(UnicodeScalar(byte))
            if character.isASCII && (character.isLetter || character.isNumber || "-_.~".contains(character)) || (keepSlash && byte == 0x2F) {
                output.append(character)
            } else {
                output += String(format: "%%%02X", byte)
            }
        }
        return output
    }

    private func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
