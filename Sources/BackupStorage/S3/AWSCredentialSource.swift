import Foundation
import Synchronization
import UTCTime

/// Where a run's AWS credentials come from, found in the AWS SDKs' order, and the credentials in use.
///
/// Keys in the environment or a credentials-file profile never change. Temporary credentials (a web
/// identity role on Kubernetes, an ECS task's, an EC2 instance profile's) last an hour to a few: they are
/// fetched again before they expire and at once when S3 answers `ExpiredToken`, so a backup or a WAL
/// archive that outlives them keeps going. No credential is ever logged or put in a message.
public final class AWSCredentialSource: Sendable, CustomStringConvertible {
    /// A source of temporary credentials and where it is reached.
    enum Provider: Sendable {
        /// STS AssumeRoleWithWebIdentity with the token in `tokenFile` (EKS service accounts).
        case webIdentity(roleARN: String, tokenFile: String, sessionName: String, endpoint: URL)
        /// The ECS/EKS-Pod-Identity container endpoint, with its authorization header value if one is set.
        case container(URL, authorization: String?)
        /// EC2's instance metadata service, IMDSv2 (a session token first).
        case instanceMetadata(URL)
    }

    private struct Held {
        var credentials: AWSCredentials
        /// When to fetch again (nil: never, fixed keys).
        var refreshAt: Date?
    }

    /// Where the credentials come from, for `--print-config` and messages (never a credential).
    public let description: String
    private let provider: Provider?
    private let held: Mutex<Held?>
    /// Short timeouts: the metadata services answer at once on the machine they serve, and a machine
    /// without one should not wait long to be told there are no credentials.
    private let transport = HTTPTransport(idleTimeout: 2, totalTimeout: 10, maxIdleHandles: 1)

    /// Fixed keys (the environment's, a profile's): used as they are for the whole run.
    public init(fixed credentials: AWSCredentials, from origin: String = "fixed keys") {
        description = origin
        provider = nil
        held = Mutex(Held(credentials: credentials, refreshAt: nil))
    }

    init(provider: Provider, description: String) {
        self.provider = provider
        self.description = description
        held = Mutex(nil)
    }

    /// Whether the credentials can be fetched again (temporary ones).
    public var refreshes: Bool { provider != nil }

    /// The credentials to sign the next request with: the held ones, or fresh ones once they are near
    /// their expiry (a fifth of their lifetime before it, at most five minutes).
    ///
    /// - Throws: `StorageError(.remote)` (`.permissionDenied` when the provider refuses) naming the provider.
    public func current() throws -> AWSCredentials {
        try held.withLock { held in
            if let now = held, now.refreshAt.map({ Date() < $0 }) ?? true { return now.credentials }
            return try fetch(into: &held)
        }
    }

    /// Fetches new credentials now (S3 said the ones in use have expired); fixed keys are returned as they are.
    public func renew(replacing stale: AWSCredentials) throws -> AWSCredentials {
        try held.withLock { held in
            guard provider != nil else { return held?.credentials ?? stale }
            // Another thread renewed them since this request was signed.
            if let now = held, now.credentials != stale { return now.credentials }
            return try fetch(into: &held)
        }
    }

    /// Fetches the first credentials with one attempt: how the chain tells whether this machine has an
    /// instance profile at all (the SDKs' way: a machine outside EC2 should not wait long to be told).
    func probe() throws {
        try held.withLock { held in _ = try fetch(into: &held, attempts: 1) }
    }

    private func fetch(into held: inout Held?, attempts: Int = 3) throws -> AWSCredentials {
        guard let provider else { throw StorageError(.remote, object: description, message: "no credentials to fetch") }
        var attempt = 1
        while true {
            let fetched = Date()
            do {
                let (credentials, expiry) = try Self.fetch(provider, description: description, transport: transport)
                held = Held(credentials: credentials, refreshAt: Self.refreshTime(fetched: fetched, expiry: expiry))
                return credentials
            } catch let error as StorageError where error.kind == .remote && attempt < attempts {
                // A metadata service or STS that blinked: again after a pause, like an S3 request.
                Thread.sleep(forTimeInterval: 0.5 * Double(attempt))
                attempt += 1
            }
        }
    }

    /// When credentials fetched at `fetched` and expiring at `expiry` are fetched again: a fifth of their
    /// lifetime before the expiry, at most five minutes before it. Without an expiry, after an hour; with one
    /// this machine's clock already puts past, in a minute (S3's `ExpiredToken` renews them sooner if need be).
    static func refreshTime(fetched: Date, expiry: Date?) -> Date {
        guard let expiry else { return fetched.addingTimeInterval(3600) }
        let lifetime = expiry.timeIntervalSince(fetched)
        return lifetime > 0 ? expiry.addingTimeInterval(-min(300, lifetime / 5)) : fetched.addingTimeInterval(60)
    }

    private static func fetch(_ provider: Provider, description: String, transport: HTTPTransport) throws -> (AWSCredentials, Date?) {
        func failure(_ message: String, status: Int? = nil) -> StorageError {
            StorageError(status == 401 || status == 403 ? .permissionDenied : .remote, object: description,
                         message: "could not get AWS credentials: \(message)",
                         hint: "check the \(description) set-up (role, trust policy, network), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        }
        func perform(_ request: HTTPRequest) throws -> HTTPResponse {
            let response: HTTPResponse
            do {
                response = try transport.perform(request)
            } catch let error as HTTPTransportError {
                throw failure("\(request.method) \(request.url.absoluteString): \(error)")
            }
            guard (200..<300).contains(response.status) else {
                // An STS error names its code; the bodies of the metadata services say nothing secret either.
                let code = XMLNode.parse(response.body)?.first("Code")?.text
                throw failure("\(request.method) \(request.url.absoluteString) answered \(response.status)\(code.map { " \($0)" } ?? "")", status: response.status)
            }
            return response
        }
        switch provider {
        case let .webIdentity(roleARN, tokenFile, sessionName, endpoint):
            guard let token = try? String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty else {
                throw failure("the web identity token file \(tokenFile) is missing or empty")
            }
            let form = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"), ("RoleArn", roleARN),
                        ("RoleSessionName", sessionName), ("WebIdentityToken", token)]
                .map { "\($0.0)=\(formEncode($0.1))" }.joined(separator: "&")
            let response = try perform(HTTPRequest(method: "POST", url: endpoint, headers: [(name: "content-type", value: "application/x-www-form-urlencoded")],
                                                   body: Data(form.utf8)))
            guard let found = XMLNode.parse(response.body)?.first("Credentials"), let key = found.value("AccessKeyId"),
                  let secret = found.value("SecretAccessKey") else {
                throw failure("STS's answer holds no credentials")
            }
            return (AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: found.value("SessionToken")),
                    found.value("Expiration").flatMap(Timestamp.parse))
        case let .container(url, authorization):
            let headers = authorization.map { [(name: "authorization", value: $0)] } ?? []
            return try credentials(fromJSON: perform(HTTPRequest(method: "GET", url: url, headers: headers)).body, failure: failure)
        case let .instanceMetadata(endpoint):
            let base = endpoint.absoluteString.hasSuffix("/") ? String(endpoint.absoluteString.dropLast()) : endpoint.absoluteString
            func url(_ path: String) throws -> URL {
                guard let url = URL(string: base + path) else { throw failure("\(base + path) is not a URL") }
                return url
            }
            let token = String(decoding: try perform(HTTPRequest(method: "PUT", url: try url("/latest/api/token"),
                                                                 headers: [(name: "x-aws-ec2-metadata-token-ttl-seconds", value: "21600")])).body, as: UTF8.self)
            let session = [(name: "x-aws-ec2-metadata-token", value: token)]
            let roles = String(decoding: try perform(HTTPRequest(method: "GET", url: try url("/latest/meta-data/iam/security-credentials/"), headers: session)).body,
                               as: UTF8.self)
            guard let role = roles.split(whereSeparator: \.isNewline).first.map(String.init), !role.isEmpty,
                  let encoded = role.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) else {
                throw failure("this instance has no IAM role (attach an instance profile)")
            }
            return try credentials(fromJSON: perform(HTTPRequest(method: "GET", url: try url("/latest/meta-data/iam/security-credentials/" + encoded),
                                                                 headers: session)).body, failure: failure)
        }
    }

    /// The JSON the container endpoint and IMDS answer: AccessKeyId, SecretAccessKey, Token, Expiration.
    private static func credentials(fromJSON body: Data, failure: (String, Int?) -> StorageError) throws -> (AWSCredentials, Date?) {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let key = object["AccessKeyId"] as? String, let secret = object["SecretAccessKey"] as? String else {
            throw failure("the answer holds no AccessKeyId and SecretAccessKey", nil)
        }
        return (AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: object["Token"] as? String),
                (object["Expiration"] as? String).flatMap(Timestamp.parse))
    }

    /// `application/x-www-form-urlencoded` value: everything but unreserved characters percent-encoded.
    private static func formEncode(_ text: String) -> String {
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
