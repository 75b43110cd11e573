import Foundation

/// Where and how to reach one S3 bucket.
public struct S3Configuration: Sendable {
    public var bucket: String
    public var region: String
    /// Custom endpoint (`--s3-endpoint`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`); nil means AWS.
    public var endpoint: URL?
    /// Path-style (`endpoint/bucket/key`) rather than virtual-hosted (`bucket.endpoint/key`).
    public var pathStyle: Bool
    /// Where the credentials come from; temporary ones are renewed before they expire.
    public var credentials: AWSCredentialSource
    /// Multipart part size in bytes (at least 5 MiB, S3's minimum for all but the last part).
    public var partSize: Int
    /// Parts uploaded at once; also the number of parts held in memory.
    public var concurrency: Int
    /// `AES256` or `aws:kms`, sent as `x-amz-server-side-encryption`.
    public var serverSideEncryption: String?
    public var kmsKeyID: String?
    /// Attempts per request (and per part) before giving up.
    public var maxAttempts: Int
    /// Seconds before one request is abandoned and retried.
    public var requestTimeout: TimeInterval

    /// Bytes per second a request body (a GET's answer, a PUT's upload) must keep up over `requestTimeout`
    /// seconds; 0 turns the floor off.
    public var lowSpeedLimit: Int
    /// A PEM file of CAs to trust instead of the system's (`AWS_CA_BUNDLE`), for an endpoint signed by a private CA.
    public var caBundle: String?

    /// 1 KiB/s: far below any link that can move a backup, far above a server that trickles a byte at a time.
    public static let defaultLowSpeedLimit = 1024

    public static let minimumPartSize = 5 * 1024 * 1024

    public init(bucket: String, region: String = "us-east-1", endpoint: URL? = nil, pathStyle: Bool? = nil,
                credentials: AWSCredentialSource, partSize: Int = 16 * 1024 * 1024, concurrency: Int = 4,
                serverSideEncryption: String? = nil, kmsKeyID: String? = nil, maxAttempts: Int = 8, requestTimeout: TimeInterval = 60,
                lowSpeedLimit: Int = S3Configuration.defaultLowSpeedLimit, caBundle: String? = nil) {
        self.bucket = bucket
        self.region = region
        self.endpoint = endpoint
        self.pathStyle = pathStyle ?? (endpoint != nil || bucket.contains("."))
        self.credentials = credentials
        self.partSize = partSize
        self.concurrency = concurrency
        self.serverSideEncryption = serverSideEncryption
        self.kmsKeyID = kmsKeyID
        self.maxAttempts = maxAttempts
        self.requestTimeout = requestTimeout
        self.lowSpeedLimit = lowSpeedLimit
        self.caBundle = caBundle
    }
}
